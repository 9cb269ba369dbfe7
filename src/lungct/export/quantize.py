"""INT8: the run's exported graph quantized by ONNX Runtime (static, QDQ), and kept only if it scores like float.

Recipe (measured on the demo run in docs/serve.md; a naive QDQ/MinMax pass over every node agreed with float on
only 93-96% of unseen slices):
- static quantization in QDQ format, weights int8 per output channel, activations uint8;
- activation ranges from the 99.999th percentile of their histogram over calibration slices taken from the run's
  own training part (outliers would otherwise stretch a range over the values that matter);
- the sensitive ends stay float: the stem (the convolution that reads the image) and the head (every node after
  the last convolution: pooling, the linear classifier, temperature, softmax), so the pooled features, logits
  and calibrated probabilities are computed in float from int8 feature maps.

Then the check that decides: float and INT8 predict the run's test part (the part model selection never saw);
export.int8.json records label agreement, the largest probability difference, and accuracy, balanced accuracy
and positive-class recall of both with a paired group-bootstrap interval of each difference. A balanced accuracy
more than `max_drop` below float's refuses the INT8 model (nothing is written); lungct.inference refuses to serve
one whose recorded drop exceeds its own margin.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungct.contracts import SplitPart
from lungct.data.images import ImageReadError, is_image_file
from lungct.data.splits import SplitItem, load_split
from lungct.errors import LungCTError
from lungct.evaluation.bootstrap import N_RESAMPLES
from lungct.evaluation.paired import paired_comparison
from lungct.files import natural_key
from lungct.inference.onnx_runtime import (
    INPUT_NAME,
    INT8_EXPORT_FILE,
    INT8_ONNX_FILE,
    OnnxModel,
    export_status,
    file_sha256,
    onnx_path,
    weights_hash,
)
from lungct.run import RunDir, model_version, write_json

CALIBRATION_METHODS = ("percentile", "entropy", "minmax")
PERCENTILE = 99.999
DEFAULT_MAX_DROP = 0.01
DEFAULT_CALIBRATION_SLICES = 128
# ONNX Runtime's histogram calibrators keep every calibration activation in memory: 256 slices of the 224 px
# MobileNetV2 fit in 24 GB, the 600 slices of a training part did not
MAX_CALIBRATION_SLICES = 256

log = logging.getLogger("lungct")


def calibration_paths(run: RunDir, n: int, seed: int = 0, folder: Path | None = None) -> list[str]:
    """Up to n slices to calibrate on: from `folder` when given, else a seeded random draw from the run's training
    part (classes in about their training proportions; seeded, so an export is reproducible)."""
    if folder is not None:
        if not folder.is_dir():
            raise LungCTError(f"calibration folder not found: {folder}")
        if (folder / "model.json").is_file():  # its images are the run's plots (curves.png), not slices
            raise LungCTError(f"the calibration folder {folder} is a run; give a folder of CT slices")
        paths = sorted((str(p) for p in folder.rglob("*") if p.is_file() and is_image_file(p)), key=natural_key)
        if not paths:
            raise LungCTError(f"no images in the calibration folder {folder}")
        return paths[:n]
    if not run.split.is_file():
        raise LungCTError(f"{run.split} not found: INT8 calibration takes slices from the run's training part")
    train = [i for i in load_split(run.split) if i.part == SplitPart.train]
    if not train:
        raise LungCTError(f"{run.split} has no training part to calibrate INT8 on; pass a calibration folder")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(train), size=min(n, len(train)), replace=False)
    return [train[i].path for i in sorted(picked)]


def _read_batch(run: RunDir, paths: list[str]) -> np.ndarray:
    pre = run.card().preprocess
    arrays = []
    for path in paths:
        try:
            arrays.append(pre.to_array(pre.load(path)))
        except ImageReadError as exc:
            log.warning("INT8 calibration skips %s: %s", path, exc.reason)
    if not arrays:
        raise LungCTError("none of the INT8 calibration images could be read")
    return np.stack(arrays)


def sensitive_nodes(model_path: Path) -> list[str]:
    """Nodes kept in float: convolutions that read the graph input (the stem), and every node with no convolution
    downstream of it (pooling, classifier, temperature, softmax; in an ensemble, each member's head)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # nodes are in topological order, so one backward pass settles "a Conv lies downstream"
    conv_below = [False] * len(graph.node)
    for i in range(len(graph.node) - 1, -1, -1):
        below = (consumers.get(out, []) for out in graph.node[i].output)
        conv_below[i] = any(graph.node[j].op_type == "Conv" or conv_below[j] for js in below for j in js)
    inputs = {i.name for i in graph.input}
    stem = [n.name for n in graph.node if n.op_type == "Conv" and set(n.input) & inputs]
    head = [n.name for i, n in enumerate(graph.node) if not conv_below[i] and n.op_type != "Conv"]
    return stem + head


def quantize_graph(
    src: Path, dst: Path, batch: np.ndarray, method: str = "percentile", also_float: Sequence[str] = ()
) -> list[str]:
    """Write the INT8 (QDQ) form of `src` to `dst`, calibrated on `batch`; returns the nodes kept in float: the
    sensitive nodes, and `also_float` (node names of `src`) for studies of where INT8 loses agreement."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise LungCTError(f"unknown INT8 calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")

    class Reader(CalibrationDataReader):
        """The calibration slices one at a time: the histogram calibrators stack every call's activations, which
        fails when the last batch is shorter than the others."""

        def __init__(self) -> None:
            self.at = 0

        def get_next(self) -> dict | None:
            self.at += 1
            return {INPUT_NAME: batch[self.at - 1 : self.at]} if self.at <= len(batch) else None

        def rewind(self) -> None:
            self.at = 0

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="lungct-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        keep_float = sensitive_nodes(prepared)
        keep_float += [n for n in also_float if n not in keep_float]
        options = {"CalibPercentile": PERCENTILE} if method == "percentile" else {}
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                    "minmax": CalibrationMethod.MinMax,
                }[method],
                nodes_to_exclude=keep_float,
                extra_options={**options, "CalibTensorRangeSymmetric": False},
            )
    return keep_float


def _test_items(run: RunDir) -> tuple[str, list[SplitItem]]:
    items = load_split(run.split) if run.split.is_file() else []
    for part in (SplitPart.test, SplitPart.val):
        chosen = [i for i in items if i.part == part]
        if chosen:
            return str(part), chosen
    raise LungCTError(
        f"{run.path} has no test or validation part in split.csv to check an INT8 model on (a fold ensemble made "
        "without `lungct cv --within RUN` has none: every image trained some member)"
    )


def check_quantizable(run_dir: str | Path, calibration_folder: Path | None = None, n_calibration: int = 1) -> None:
    """Refuse, before the float export's minutes (which rewrite model.onnx), a run that has no held-out part to check
    its INT8 model on, or calibration images that cannot be had."""
    run = RunDir(run_dir)
    _test_items(run)
    calibration_paths(run, n_calibration, folder=calibration_folder)


def _predict(model: OnnxModel, batch: np.ndarray, temperature_in_graph: bool) -> np.ndarray:
    from scipy.special import softmax

    out = [model.run(batch[i : i + 32]) for i in range(0, len(batch), 32)]
    if temperature_in_graph:  # the served probabilities; both graphs hold the same temperature
        return np.concatenate([o["probabilities"] for o in out])
    return softmax(np.concatenate([o["logits"] for o in out]).astype(np.float64), axis=1)


def quantize_run(
    run_dir: str | Path,
    method: str = "percentile",
    n_calibration: int = DEFAULT_CALIBRATION_SLICES,
    max_drop: float = DEFAULT_MAX_DROP,
    calibration_folder: Path | None = None,
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """RUN/model.int8.onnx and RUN/export.int8.json from the run's current float export; returns export.int8.json.

    LungCTError (and no INT8 file) when the float export is missing or stale, or when INT8's balanced accuracy on
    the test part is more than max_drop below float's.
    """
    if not 1 <= n_calibration <= MAX_CALIBRATION_SLICES:
        raise LungCTError(
            f"INT8 calibration takes 1 to {MAX_CALIBRATION_SLICES} slices (their activations are held in memory), "
            f"not {n_calibration}"
        )
    run = RunDir(run_dir)
    version = model_version(run)
    info, reason = export_status(run, version)
    if info is None:
        raise LungCTError(f"INT8 starts from the float export: {reason}")
    start = time.perf_counter()
    cal_paths = calibration_paths(run, n_calibration, folder=calibration_folder)
    cal_batch = _read_batch(run, cal_paths)
    part, test = _test_items(run)
    classes = list(run.card().classes)
    test_batch = _read_batch(run, [i.path for i in test])  # a test slice that cannot be read fails loudly below
    if len(test_batch) != len(test):
        raise LungCTError(f"some {part} slices of {run.split} cannot be read; the INT8 check needs all of them")
    target, tmp = run.path / INT8_ONNX_FILE, run.path / (INT8_ONNX_FILE + ".tmp")
    try:
        keep_float = quantize_graph(onnx_path(run), tmp, cal_batch, method)
        in_graph = bool((info.get("calibration") or {}).get("in_graph"))
        float_probs = _predict(OnnxModel(onnx_path(run), 1), test_batch, in_graph)
        int8_probs = _predict(OnnxModel(tmp, 1), test_batch, in_graph)
        y = np.array([classes.index(i.label) for i in test])
        positive = run.card().positive_class
        check = paired_comparison(
            y,
            float_probs,
            int8_probs,
            [i.group for i in test],
            classes.index(positive) if positive in classes else None,
            ("float", "int8"),
            n_resamples,
        )
        drop = -check["metrics"]["balanced_accuracy"]["change"]
        if drop > max_drop:
            raise LungCTError(
                f"INT8 refused: balanced accuracy on the {part} part drops by {drop:.3f} "
                f"({check['metrics']['balanced_accuracy']['float']:.3f} -> "
                f"{check['metrics']['balanced_accuracy']['int8']:.3f}; labels agree on "
                f"{check['label_agreement']:.1%} of {check['n']} slices), over the {max_drop:g} margin; "
                "model.int8.onnx not written (check the calibration images, or keep serving float)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    result = {
        "format": "onnx-int8-qdq",
        "file": INT8_ONNX_FILE,
        "sha256": file_sha256(target),
        "model_version": version,
        "weights_hash": weights_hash(version),
        "float_sha256": info["sha256"],
        "calibration": info.get("calibration"),
        "quantization": {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": "int8, per channel",
            "activations": "uint8",
            "calibration_method": method,
            "percentile": PERCENTILE if method == "percentile" else None,
            "calibration_images": len(cal_batch),
            "calibration_source": str(calibration_folder) if calibration_folder else "the run's training part",
            "kept_float": keep_float,
        },
        "check": {"part": part, "max_drop": max_drop, "balanced_accuracy_drop": drop, **check},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run.path / INT8_EXPORT_FILE, result)
    return result
