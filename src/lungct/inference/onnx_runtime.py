"""Running an exported model.onnx with ONNX Runtime, and deciding whether it still matches its run.

An export is trusted only while
- export.json's weights hash equals the run's current one (the hash of weights + calibration that ends
  model_version; not the run folder's name, so a renamed or copied run keeps its export): retraining or
  recalibrating a run makes its ONNX file stale;
- model.onnx's sha256 is the one export.json recorded when it was written: a replaced or damaged graph is
  not the one that was checked against PyTorch;
- the graph's signature fits model.json: input N x 3 x S x S for preprocess.input_size S, and one output
  per class (`OnnxModel.check_signature`).
Otherwise the Predictor falls back to PyTorch ("auto") or refuses ("onnx") rather than serving probabilities
from another model.

The INT8 graph (`lungct export --quantize int8`: model.int8.onnx with export.int8.json, lungct.export.quantize)
is trusted on the same terms, and only while the balanced-accuracy drop its export measured on the test part is
within the margin the server allows (`int8_status`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lungct.errors import LungCTError, one_line
from lungct.run import RunDir

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
INT8_ONNX_FILE = "model.int8.onnx"
INT8_EXPORT_FILE = "export.int8.json"
PRECISIONS = ("auto", "float", "int8")  # auto: INT8 when the run has a usable one, else float
INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "logits", "features")


def onnx_path(run: RunDir) -> Path:
    return run.path / ONNX_FILE


def read_export_info(run: RunDir, info_file: str = EXPORT_FILE, graph_file: str = ONNX_FILE) -> dict | None:
    """export.json (or export.int8.json) as a dict, or None when the run has no (complete) such export."""
    info_path = run.path / info_file
    if not info_path.is_file() or not (run.path / graph_file).is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # ValueError: not JSON, or not UTF-8 text at all
        raise LungCTError(f"{info_path} is damaged: {one_line(exc)}") from None
    if not isinstance(info, dict):  # callers read it with .get(): a list or a number would be a traceback
        raise LungCTError(f"{info_path} is damaged: it is not the JSON object lungct export writes")
    return info


def weights_hash(version: str) -> str:
    """The weights + calibration hash that ends a model_version ("<run>-<arch>-<hash>"); the run's name and
    backbone before it do not decide whether an export is current."""
    return str(version).rsplit("-", 1)[-1]


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def export_status(
    run: RunDir, version: str, info_file: str = EXPORT_FILE, graph_file: str = ONNX_FILE
) -> tuple[dict | None, str]:
    """(export info if the graph is usable for `version`, else None; a one-line reason either way)."""
    info = read_export_info(run, info_file, graph_file)
    quantize = " --quantize int8" if graph_file == INT8_ONNX_FILE else ""
    again = f"re-export with: lungct export --run {run.path}{quantize}"
    if info is None and (run.path / graph_file).is_file():  # the graph alone cannot be checked against the run
        return None, f"{graph_file} has no {info_file} beside it, so it cannot be verified ({again})"
    if info is None:
        return None, f"no {graph_file} in the run (create it with: lungct export --run {run.path}{quantize})"
    exported = info.get("weights_hash") or weights_hash(info.get("model_version", ""))
    if exported != weights_hash(version):
        return None, (
            f"{graph_file} is stale: exported from {info.get('model_version')}, the run is now {version} ({again})"
        )
    recorded = info.get("sha256")
    if not recorded:
        return None, f"{info_file} records no sha256 of {graph_file}, so the graph cannot be verified ({again})"
    try:
        actual = file_sha256(run.path / graph_file)
    except OSError as exc:
        return None, f"{graph_file} cannot be read ({type(exc).__name__})"
    if actual != recorded:
        return None, (
            f"{graph_file} does not match {info_file}: sha256 {actual[:12]}... where {recorded[:12]}... was "
            f"recorded; the file was replaced or damaged after export ({again})"
        )
    return info, f"{graph_file} matches model version {version} (sha256 verified)"


def int8_status(run: RunDir, version: str, max_drop: float) -> tuple[dict | None, str]:
    """export_status of the INT8 graph, which is also refused when its export measured a balanced-accuracy drop
    on the test part over `max_drop`."""
    info, reason = export_status(run, version, INT8_EXPORT_FILE, INT8_ONNX_FILE)
    if info is None:
        return None, reason
    check = info.get("check")
    drop = check.get("balanced_accuracy_drop") if isinstance(check, dict) else None
    if drop is not None and not isinstance(drop, (int, float)):
        damaged = f"{INT8_EXPORT_FILE} is damaged: its accuracy check is not a number"
        return None, f"{damaged}; re-export with: lungct export --quantize int8"
    if drop is None:
        return None, f"{INT8_EXPORT_FILE} records no accuracy check; re-export with: lungct export --quantize int8"
    if drop > max_drop:
        return None, (
            f"{INT8_ONNX_FILE} is refused: its balanced accuracy on the {info['check'].get('part', 'test')} part is "
            f"{drop:.3f} below float's, over the {max_drop:g} margin (int8_max_drop); serve float instead"
        )
    return info, f"{reason}; balanced accuracy {-drop:+.3f} against float on the test part"


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
            raise LungCTError(f"cannot load {path} with onnxruntime: {one_line(exc)}") from exc
        self.path = path
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise LungCTError(f"{path} lacks the outputs {', '.join(missing)}; re-export it with lungct export")

    def check_signature(self, input_size: int, n_classes: int, channels: int = 3) -> None:
        """LungCTError unless the graph takes N x channels x input_size x input_size and gives n_classes scores.

        Static shapes are compared first; dimensions the graph leaves symbolic are settled by one run on zeros.
        """
        path = self.path
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise LungCTError(f"{path} has no input named {INPUT_NAME!r}; re-export it with lungct export")
        want_in = [channels, input_size, input_size]
        shape = list(inputs[INPUT_NAME].shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want_in, strict=True)):
            raise LungCTError(
                f"{path} takes input {_shape(shape)}, but model.json needs N x {channels} x {input_size} x "
                f"{input_size}; it was exported for another model (re-export it with lungct export)"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        static = [list(outputs[n].shape) for n in ("probabilities", "logits")]
        if all(len(s) == 2 and isinstance(s[1], int) for s in static) and all(isinstance(d, int) for d in shape[1:]):
            got = {s[1] for s in static}
        else:
            try:
                out = self.run(np.zeros((1, *want_in), dtype=np.float32))
            except Exception as exc:  # onnxruntime raises its own types for shape errors
                raise LungCTError(
                    f"{path} does not run on a 1 x {channels} x {input_size} x {input_size} input "
                    f"({type(exc).__name__}); re-export it with lungct export"
                ) from exc
            got = {int(out[n].shape[-1]) for n in ("probabilities", "logits")}
        if got != {n_classes}:
            shown = "/".join(str(g) for g in sorted(got))
            raise LungCTError(
                f"{path} gives {shown} class scores, but model.json has {n_classes} classes; "
                "it was exported for another model (re-export it with lungct export)"
            )

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """probabilities, logits and features for a float32 NCHW batch."""
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def _shape(shape: list) -> str:
    return " x ".join(str(d) if isinstance(d, int) else "N" for d in shape)
