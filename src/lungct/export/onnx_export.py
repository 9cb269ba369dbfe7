"""Export a run to ONNX (dynamic batch axis, calibration included where a graph can hold it) and verify it.

The graph has one input, `input` (float32, N x 3 x S x S, already preprocessed as model.json says), and three
outputs: `probabilities`, `logits` and `features` (the pooled backbone features, i.e. the head's input,
which the prediction log stores as the embedding for drift reports). Temperature scaling is
softmax(logits / T), so it lives inside the graph and `probabilities` are the calibrated ones. An isotonic
calibration is a per-class lookup table that ONNX has no tidy operator for: the graph then gives the
uncalibrated softmax and lungct.inference.Predictor applies calibration.json in numpy. export.json says
which of the two the graph holds, and records model.onnx's sha256 and the weights hash that
lungct.inference.onnx_runtime checks before the graph is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lungct.contracts import SplitPart
from lungct.data.images import ImageReadError
from lungct.data.splits import load_split
from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.inference.calibration import TemperatureScaling, load_calibration
from lungct.inference.onnx_runtime import (
    EXPORT_FILE,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAMES,
    OnnxModel,
    file_sha256,
    weights_hash,
)
from lungct.run import RunDir, load_model, model_version, write_json

FORMATS = ("onnx",)
DEFAULT_OPSET = 18
# torch's dynamo exporter implements opset 18 and newer only. Asked for less, it writes opset 18 and tries to
# convert the file down with onnx's version converter, which fails on these graphs (Reduce* ops whose axes are
# inputs) and leaves it at 18 while printing a traceback. The TorchScript exporter (torch.onnx.export with
# dynamo=False) writes opsets 13 to 17 natively, so those go to it (checked for every opset from 13 to 17).
DYNAMO_MIN_OPSET = 18
# float32 through different kernels: probabilities agree to ~1e-6; 1e-4 still catches any real mismatch.
PROB_TOLERANCE = 1e-4
FEATURE_RTOL = 1e-3  # features are unbounded, so their bound is relative to their largest magnitude

log = logging.getLogger("lungct")


class ServingGraph(nn.Module):
    """What gets exported: the classifier plus (temperature) calibration, returning all three outputs."""

    def __init__(self, model: nn.Module, temperature: float | None):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features = self.model.forward_with_features(x)
        scaled = logits / self.temperature if self.temperature else logits
        return torch.softmax(scaled, dim=1), logits, features


def sample_inputs(run: RunDir, preprocess, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Up to n preprocessed slices from the run's split (test part first), topped up with random tensors."""
    tensors: list[torch.Tensor] = []
    if run.split.is_file():
        items = sorted(load_split(run.split), key=lambda i: i.part != SplitPart.test)
        for item in items:
            if len(tensors) >= n // 2:
                break
            try:
                tensors.append(prepare_image(preprocess.load(item.path), preprocess))
            except ImageReadError:
                continue
    n_real = len(tensors)
    generator = torch.Generator().manual_seed(seed)
    size = preprocess.input_size
    while len(tensors) < n:
        tensors.append(torch.randn(3, size, size, generator=generator))
    return torch.stack(tensors), f"{n_real} slices from the run's split + {n - n_real} random tensors"


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Keep the exporters' own warnings (torch.onnx's and onnxscript's, a version conversion's traceback among
    them) off stderr: what they mean for the file (its opset, whether it runs) is checked and told in lungct's
    words."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _torch_export(graph: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """torch.onnx.export with the torch.export-based (dynamo) exporter; the TorchScript one if that fails or for
    an opset below DYNAMO_MIN_OPSET, which the dynamo exporter cannot write."""
    common = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES), "opset_version": opset}
    if opset < DYNAMO_MIN_OPSET:
        return _torchscript_export(graph, example, path, common)
    try:
        with _quiet_exporter_logs():
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                **common,
            )
        return "torch.onnx (dynamo)"
    except Exception as exc:  # the exporter fails in many ways (unsupported op, guard, ...); try the older one
        log.warning("dynamo ONNX export failed (%s: %s); trying the TorchScript exporter", type(exc).__name__, exc)
    return _torchscript_export(graph, example, path, common)


def _torchscript_export(graph: nn.Module, example: torch.Tensor, path: Path, common: dict) -> str:
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    try:
        with _quiet_exporter_logs():  # its deprecation notice is known and says nothing about this model
            torch.onnx.export(graph, (example,), str(path), dynamo=False, dynamic_axes=axes, **common)
    except Exception as exc:
        raise LungCTError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    return "torch.onnx (torchscript)"


def graph_opset(path: Path) -> int | None:
    """The default-domain (ai.onnx) opset a written ONNX file declares: what a runtime judges it by."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _max_abs_diff(onnx_model: OnnxModel, graph: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Largest |ONNX - PyTorch| per output over `batch`, run once whole and once image by image (batch 1)."""
    with torch.inference_mode():
        expected = [t.numpy() for t in graph(batch)]
    whole = onnx_model.run(batch.numpy())
    singles = [onnx_model.run(batch[i : i + 1].numpy()) for i in range(len(batch))]
    out = {}
    for name, ref in zip(OUTPUT_NAMES, expected, strict=True):
        got_single = np.concatenate([s[name] for s in singles])
        out[name] = float(max(np.abs(whole[name] - ref).max(), np.abs(got_single - ref).max()))
    out["features_scale"] = float(np.abs(expected[2]).max())
    return out


def export_onnx(run_dir: str | Path, fmt: str = "onnx", opset: int = DEFAULT_OPSET, samples: int = 8) -> dict:
    """Write RUN/model.onnx and RUN/export.json after checking ONNX Runtime against PyTorch; returns export.json.

    Raises LungCTError (and leaves no model.onnx behind) when the two disagree beyond the tolerance.
    """
    if fmt not in FORMATS:
        raise LungCTError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    run = RunDir(run_dir)
    run.require_model()
    model, card = load_model(run)
    version = model_version(run)
    calibration = load_calibration(run.path)
    temperature = calibration.temperature if isinstance(calibration, TemperatureScaling) else None
    graph = ServingGraph(model, temperature).eval()
    size = card.preprocess.input_size
    target = run.path / ONNX_FILE
    tmp = run.path / (ONNX_FILE + ".tmp")
    start = time.perf_counter()
    try:
        exporter = _torch_export(graph, torch.zeros(2, 3, size, size), tmp, opset)
        written = graph_opset(tmp)
        if written != opset:  # an exporter may quietly write another opset than asked; a runtime would refuse it
            raise LungCTError(
                f"could not export at opset {opset}: the exporter ({exporter}) wrote opset {written}; "
                f"{ONNX_FILE} was not changed"
            )
        onnx_model = _check_graph(tmp)
        batch, described = sample_inputs(run, card.preprocess, max(2, samples))
        diffs = _max_abs_diff(onnx_model, graph, batch)
        feature_bound = FEATURE_RTOL * max(1.0, diffs["features_scale"])
        if diffs["probabilities"] > PROB_TOLERANCE or diffs["features"] > feature_bound:
            raise LungCTError(
                f"ONNX Runtime disagrees with PyTorch: max abs difference {diffs['probabilities']:.3g} in "
                f"probabilities (bound {PROB_TOLERANCE:g}), {diffs['features']:.3g} in features "
                f"(bound {feature_bound:.3g}); model.onnx not written"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    info = {
        "format": "onnx",
        "file": ONNX_FILE,
        "sha256": file_sha256(target),  # checked at load: a replaced model.onnx is not trusted
        "model_version": version,
        "weights_hash": weights_hash(version),  # what staleness compares; independent of the run's folder name
        "arch": card.arch,
        "classes": list(card.classes),
        "opset": written,  # read back from the file, not the option
        "exporter": exporter,
        "torch_version": torch.__version__,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "preprocess": "model.json's preprocess (resize, centre crop, normalise); NCHW",
        },
        "outputs": {
            "probabilities": ["batch", len(card.classes)],
            "logits": ["batch", len(card.classes)],
            "features": ["batch", int(_feature_width(onnx_model, size))],
        },
        "calibration": _calibration_note(calibration),
        "check": {
            "inputs": described,
            "batch_sizes": [1, len(batch)],
            "max_abs_diff": {k: diffs[k] for k in OUTPUT_NAMES},
            "bounds": {"probabilities": PROB_TOLERANCE, "features": feature_bound},
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run.path / EXPORT_FILE, info)
    return info


def _check_graph(path: Path) -> OnnxModel:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise LungCTError(f"the exported ONNX graph is invalid: {str(exc)[:300]}") from exc
    return OnnxModel(path)


def _feature_width(onnx_model: OnnxModel, size: int) -> int:
    return onnx_model.run(np.zeros((1, 3, size, size), dtype=np.float32))["features"].shape[1]


def _calibration_note(calibration) -> dict:
    if calibration is None:
        return {"method": None, "in_graph": False, "probabilities": "uncalibrated (the run has no calibration.json)"}
    if isinstance(calibration, TemperatureScaling):
        return {
            "method": "temperature",
            "temperature": calibration.temperature,
            "in_graph": True,
            "probabilities": "calibrated: softmax(logits / temperature)",
        }
    return {
        "method": calibration.to_dict()["method"],
        "in_graph": False,
        "probabilities": "uncalibrated softmax; Predictor applies calibration.json (isotonic) in numpy",
    }
