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

from int8_flips import float_reference
from lungct.export.quantize import _predict, _read_batch, calibration_paths, quantize_graph
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
    ref = float_reference(run)
    y = np.array([ref.classes.index(i.label) for i in ref.items])
    result = {
        "run": str(run.path),
        "test_slices": len(ref.items),
        "float_balanced_accuracy": round(float(balanced_accuracy_score(y, ref.p_float.argmax(1))), 4),
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="lungct-int8-variants-") as tmp:
        dst = Path(tmp) / "int8.onnx"
        for name, (extra, n, method) in VARIANTS.items():
            cal = _read_batch(run, calibration_paths(run, n))
            also = last_convs(run.path / "model.onnx", extra)
            kept = quantize_graph(run.path / "model.onnx", dst, cal, method, also_float=also)
            p = _predict(OnnxModel(dst, threads=2), ref.batch, ref.in_graph)
            diff = np.abs(p - ref.p_float).max(1)
            row = {
                "kept_float": len(kept),
                "agreement": round(float((p.argmax(1) == ref.p_float.argmax(1)).mean()), 4),
                "probability_difference_median": round(float(np.median(diff)), 4),
                "probability_difference_max": round(float(diff.max()), 4),
                "balanced_accuracy": round(float(balanced_accuracy_score(y, p.argmax(1))), 4),
            }
            result["variants"][name] = row
            print(name, row, flush=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
