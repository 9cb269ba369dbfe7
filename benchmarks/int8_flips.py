"""Which test slices change label between an exported run's float and INT8 graphs, and how close float was.

The serving issue bounds INT8's change in accuracy, balanced accuracy and malignant recall by 0.01 on the test
part. This shows what such a change is made of: the slices whose label flips, float's margin between its top two
classes on each, and the patient group each belongs to.

    .venv/bin/python benchmarks/int8_flips.py [--run runs/bench/serve]     # after benchmarks/serve.py exported it

Writes benchmarks/results/int8_flips.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the export check's own test part, slice reading and probabilities, so the flips are those the check counted
from lungct.export.quantize import _predict, _read_batch, _test_items
from lungct.inference.onnx_runtime import OnnxModel
from lungct.run import RunDir

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FloatReference:
    """A run's test part as the export check reads it, and the float graph's probabilities on it."""

    classes: list[str]
    items: list
    batch: np.ndarray
    in_graph: bool  # the temperature is in the graph: compare the served probabilities
    p_float: np.ndarray


def float_reference(run: RunDir) -> FloatReference:
    in_graph = bool(json.loads((run.path / "export.json").read_text()).get("calibration", {}).get("in_graph"))
    _, items = _test_items(run)
    batch = _read_batch(run, [i.path for i in items])
    p_float = _predict(OnnxModel(run.path / "model.onnx", threads=2), batch, in_graph)
    return FloatReference(list(run.card().classes), items, batch, in_graph, p_float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "bench" / "serve"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "int8_flips.json"))
    args = parser.parse_args()
    run = RunDir(args.run)
    if not (run.path / "model.int8.onnx").is_file():
        raise SystemExit(f"{run.path} has no model.int8.onnx: run benchmarks/serve.py (it exports both) or pass --run")
    ref = float_reference(run)
    classes, items, p_float = ref.classes, ref.items, ref.p_float
    p_int8 = _predict(OnnxModel(run.path / "model.int8.onnx", threads=2), ref.batch, ref.in_graph)
    difference = np.abs(p_float - p_int8).max(1)
    top2 = np.sort(p_float, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flipped = np.flatnonzero(p_float.argmax(1) != p_int8.argmax(1))
    per_class = {c: sum(i.label == c for i in items) for c in classes}
    result = {
        "run": str(run.path),
        "test_slices": len(items),
        "test_groups": len({i.group for i in items}),
        "slices_per_class": per_class,
        "one_slice_moves": {
            "accuracy": round(1 / len(items), 4),
            **{f"{c}.recall": round(1 / n, 4) for c, n in per_class.items() if n},
        },
        "probability_difference": {
            "median": round(float(np.median(difference)), 4),
            "p90": round(float(np.quantile(difference, 0.9)), 4),
        },
        "float_margin_median_all": round(float(np.median(margin)), 4),
        "flipped": [
            {
                "label": items[k].label,
                "group": items[k].group,
                "float": classes[int(p_float[k].argmax())],
                "int8": classes[int(p_int8[k].argmax())],
                "float_margin": round(float(margin[k]), 4),
            }
            for k in flipped
        ],
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "flipped"}))
    for row in result["flipped"]:
        print(row)


if __name__ == "__main__":
    main()
