"""Does INT8's disagreement with float come from one layer or the calibration? The export's recipe against variants.

Quantizes an exported run's model.onnx with `lungct.export.quantize.quantize_graph` several ways (the export's own
recipe; also the last one or three convolutions kept float; 256 calibration slices; MinMax and entropy ranges) and
scores each on the run's test part against float: label agreement, probability differences, balanced accuracy.
Writes nothing into the run.

    .venv/bin/lungct export --run R        # once: R/model.onnx (use a copy of runs/demo)
    .venv/bin/python benchmarks/int8_variants.py --run R   # -> benchmarks/results/int8_variants.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from sklearn.metrics import balanced_accuracy_score

from lungct.export import quantize
from lungct.export.quantize import _predict, _read_batch, _test_items, calibration_paths, quantize_graph
from lungct.inference.onnx_runtime import OnnxModel
from lungct.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
# name: (convolutions at the end also kept float, calibration slices, calibration method)
VARIANTS = {
    "export recipe (percentile, 128 slices)": (0, 128, "percentile"),
    "+ last convolution float": (1, 128, "percentile"),
    "+ last three convolutions float": (3, 128, "percentile"),
    "256 calibration slices": (0, 256, "percentile"),
    "minmax ranges": (0, 128, "minmax"),
    "entropy ranges": (0, 128, "entropy"),
}


def last_convs(path: Path, k: int) -> list[str]:
    convs = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]
    return convs[-k:] if k else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "int8_variants.json"))
    args = parser.parse_args()
    run = RunDir(args.run)
    if not (run.path / "model.onnx").is_file():
        raise SystemExit(f"{run.path} has no model.onnx: run `lungct export --run {run.path}` first")
    in_graph = bool(json.loads((run.path / "export.json").read_text()).get("calibration", {}).get("in_graph"))
    classes = list(run.card().classes)
    _, items = _test_items(run)
    batch = _read_batch(run, [i.path for i in items])
    y = np.array([classes.index(i.label) for i in items])
    p_float = _predict(OnnxModel(run.path / "model.onnx", threads=2), batch, in_graph)
    own = quantize.sensitive_nodes
    result = {"run": str(run.path), "test_slices": len(items), "float_balanced_accuracy": None, "variants": {}}
    result["float_balanced_accuracy"] = round(float(balanced_accuracy_score(y, p_float.argmax(1))), 4)
    with tempfile.TemporaryDirectory(prefix="lungct-int8-variants-") as tmp:
        for name, (extra, n, method) in VARIANTS.items():
            # quantize_graph looks sensitive_nodes up in its module when called
            quantize.sensitive_nodes = lambda path, extra=extra: own(path) + last_convs(path, extra)
            try:
                dst = Path(tmp) / "int8.onnx"
                cal = _read_batch(run, calibration_paths(run, n))
                kept = quantize_graph(run.path / "model.onnx", dst, cal, method)
            finally:
                quantize.sensitive_nodes = own
            p = _predict(OnnxModel(dst, threads=2), batch, in_graph)
            diff = np.abs(p - p_float).max(1)
            row = {
                "kept_float": len(kept),
                "agreement": round(float((p.argmax(1) == p_float.argmax(1)).mean()), 4),
                "probability_difference_median": round(float(np.median(diff)), 4),
                "probability_difference_max": round(float(diff.max()), 4),
                "balanced_accuracy": round(float(balanced_accuracy_score(y, p.argmax(1))), 4),
            }
            result["variants"][name] = row
            print(name, row, flush=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
