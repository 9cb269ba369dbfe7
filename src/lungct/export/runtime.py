"""Running an exported model.onnx with ONNX Runtime, and deciding whether it still matches its run.

An export is trusted only while export.json's model_version equals the run's current version (a hash of
weights + calibration): retraining or recalibrating a run makes its ONNX file stale, and the Predictor
then falls back to PyTorch rather than serving probabilities from different weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lungct.errors import LungCTError
from lungct.run import RunDir

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "logits", "features")


def onnx_path(run: RunDir) -> Path:
    return run.path / ONNX_FILE


def read_export_info(run: RunDir) -> dict | None:
    """export.json as a dict, or None when the run has no (complete) ONNX export."""
    info_path = run.path / EXPORT_FILE
    if not info_path.is_file() or not onnx_path(run).is_file():
        return None
    try:
        return json.loads(info_path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise LungCTError(f"{info_path} is damaged: {exc}") from exc


def export_status(run: RunDir, version: str) -> tuple[dict | None, str]:
    """(export info if model.onnx is usable for `version`, else None; a one-line reason either way)."""
    info = read_export_info(run)
    if info is None:
        return None, f"no {ONNX_FILE} in the run (create it with: lungct export --run {run.path} --format onnx)"
    if info.get("model_version") != version:
        return None, (
            f"{ONNX_FILE} is stale: exported from {info.get('model_version')}, the run is now {version} "
            f"(re-export with: lungct export --run {run.path} --format onnx)"
        )
    return info, f"{ONNX_FILE} matches model version {version}"


class OnnxModel:
    """An ONNX Runtime session on the CPU; `run` is thread-safe, so API workers can share one instance."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # an optional accelerator: the caller falls back to PyTorch
            raise LungCTError(f"onnxruntime is not installed ({exc})") from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise LungCTError(f"cannot load {path} with onnxruntime: {str(exc)[:200]}") from exc
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise LungCTError(f"{path} lacks the outputs {', '.join(missing)}; re-export it with lungct export")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """probabilities, logits and features for a float32 NCHW batch."""
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))
