"""Prediction from a run directory: files or folders in, one result per file out.

The Predictor is what the CLI, evaluation, the API and the app share, so they cannot diverge. It runs the
run's model.onnx with ONNX Runtime when that export matches the run's current weights and calibration
(`lungct export`), and the PyTorch model otherwise; `backend` forces one or the other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from torch.utils.data import DataLoader
from tqdm import tqdm

from lungct.contracts import Backend, Prediction
from lungct.data.dataset import CTImageDataset
from lungct.data.images import ImageReadError, is_image_file
from lungct.data.transforms import eval_transform, prepare_image
from lungct.errors import LungCTError
from lungct.files import natural_key
from lungct.inference.calibration import load_calibration
from lungct.run import RunDir, load_model, model_version

BACKENDS = tuple(Backend)  # lungct.contracts.Backend is the one list
log = logging.getLogger("lungct")
LINE_FIELDS = {"predicted", "probabilities"}  # what a `lungct predict` line says of a prediction


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Folders become the image files under them (natural order); files are kept even if not images.

    A folder member with an image name that is not a regular file (a FIFO, device or socket) is kept too, so
    that its result says "not a regular file" instead of it vanishing; nothing here opens it.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                (f for f in p.rglob("*") if is_image_file(f) and f.exists() and not f.is_dir()),
                key=lambda f: natural_key(str(f)),
            )
        else:
            out.append(p)
    return out


def unfinished_run(run_dir: str | Path) -> str | None:
    """Why a run is not finished (summary.json's status is not "complete"), or None when it is.

    Training writes model.json and model.safetensors long before it ends, so a run that is still training
    (or was interrupted) predicts with an intermediate checkpoint; callers warn about that. A run without
    summary.json (made by hand, or by an older lungct) is not judged.
    """
    run = RunDir(run_dir)
    if not run.summary.is_file():
        return None
    try:
        status = run.read_summary().status
    except (OSError, LungCTError):
        return f"{run.summary} cannot be read, so whether training finished is unknown"
    if status == "complete":
        return None
    return (
        f"{Path(run_dir)} is an unfinished run (summary.json status {status!r}, not 'complete'): "
        "its weights are an intermediate checkpoint"
    )


def _read_error(exc: Exception) -> str:
    """What a result says about a file that could not be read: the reader's reason, or the exception's type."""
    if isinstance(exc, ImageReadError):
        return exc.reason
    log.debug("unexpected error reading a file", exc_info=exc)
    return f"cannot read the file ({type(exc).__name__})"  # no message: it could quote a DICOM tag


class Predictor:
    """Calibrated probabilities from a run. `tta=True` averages each slice with its mirror image.

    Test-time augmentation uses only the horizontal flip: it is the one training augmentation that leaves a
    CT slice anatomically plausible at full strength (left/right lungs swap), and it doubles the cost.

    backend: "auto" (ONNX Runtime when RUN/model.onnx is there and not stale, else PyTorch), "onnx" (an error
    when it cannot be used) or "torch". `.backend` says which one answers and `.backend_reason` why.
    threads: ONNX Runtime's intra-op threads (default: torch.get_num_threads(), so both obey the same limit).
    The PyTorch model (`.model`) is loaded on first use on the ONNX backend: Grad-CAM and callers that
    need it still get it.
    """

    def __init__(
        self,
        run_dir: str | Path,
        batch_size: int = 32,
        tta: bool = False,
        backend: str = "auto",
        threads: int | None = None,
    ):
        if backend not in BACKENDS:
            raise LungCTError(f"unknown inference backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.run = RunDir(run_dir)
        self.tta = tta
        self.card = self.run.card()
        self.classes = self.card.classes
        self.batch_size = batch_size
        # The run's calibration (lungct calibrate), or None: applied to every probability we hand out.
        self.calibration = load_calibration(self.run.path)
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self._onnx = None
        self._graph_calibration: dict | None = None
        self.backend, self.backend_reason = self._choose_backend(backend, threads)
        if self.backend == "torch":
            _ = self.model  # load now: a broken weights file is reported when the predictor is made

    @cached_property
    def model_version(self) -> str:
        return model_version(self.run)

    @property
    def model(self) -> torch.nn.Module:
        with self._lock:
            if self._model is None:
                self._model, _ = load_model(self.run)
            return self._model

    @model.setter
    def model(self, module: torch.nn.Module) -> None:
        with self._lock:
            self._model = module

    def _choose_backend(self, wanted: str, threads: int | None) -> tuple[str, str]:
        if wanted == "torch":
            return "torch", "PyTorch requested"
        from lungct.inference.onnx_runtime import OnnxModel, export_status, onnx_path

        info, reason = export_status(self.run, self.model_version)
        if info is not None:
            try:
                self._onnx = OnnxModel(onnx_path(self.run), threads or torch.get_num_threads())
                self._onnx.check_signature(self.card.preprocess.input_size, len(self.classes))
            except LungCTError as exc:
                self._onnx = None
                info, reason = None, str(exc)
        if info is None:
            if wanted == "onnx":
                raise LungCTError(f"cannot use the ONNX backend: {reason}")
            log.debug("inference on PyTorch: %s", reason)
            return "torch", f"PyTorch fallback: {reason}"
        cal = info.get("calibration") or {}
        if cal.get("in_graph"):  # the one calibration a graph holds: softmax(logits / T)
            self._graph_calibration = {"method": "temperature", "temperature": cal["temperature"]}
        return "onnx", f"ONNX Runtime: {reason}"

    def probabilities(self, batch: torch.Tensor | np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Probabilities, N x classes, for a preprocessed NCHW batch: calibrated when the run is, unless
        `calibrated=False` asks for the model's own softmax (what `lungct calibrate` fits on)."""
        return self.probabilities_and_features(batch, calibrated)[0]

    def probabilities_and_features(
        self, batch: torch.Tensor | np.ndarray, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, pooled backbone features) for a preprocessed batch; the features feed drift reports.

        calibrated=False: the uncalibrated softmax, also on an ONNX graph that holds the temperature (its
        logits are used then), without touching `self.calibration`, so concurrent callers never see it change.
        """
        calibration = self.calibration if calibrated else None
        in_graph = calibration is not None and self._graph_holds(calibration)
        if self.backend == "onnx":
            probs, features = self._onnx_forward(np.asarray(batch, dtype=np.float32), in_graph)
        else:
            probs, features = self._torch_forward(torch.as_tensor(batch, dtype=torch.float32))
        if calibration is not None and not in_graph:
            probs = calibration.apply(probs).astype(np.float32)
        return probs, features

    def _graph_holds(self, calibration) -> bool:
        """Whether the ONNX graph's `probabilities` already are `calibration` applied (temperature in graph)."""
        return self.backend == "onnx" and not self.tta and calibration.to_dict() == self._graph_calibration

    def _onnx_forward(self, batch: np.ndarray, calibrated_in_graph: bool) -> tuple[np.ndarray, np.ndarray]:
        """calibrated_in_graph: return the graph's (calibrated) `probabilities`; otherwise softmax of its logits."""
        n = len(batch)
        if not self.tta:
            out = self._onnx.run(batch)
            if calibrated_in_graph:
                return out["probabilities"], out["features"]
            return softmax(out["logits"].astype(np.float64), axis=1).astype(np.float32), out["features"]
        out = self._onnx.run(np.concatenate([batch, batch[:, :, :, ::-1]]))  # one call for both views
        probs = softmax(out["logits"].astype(np.float64), axis=1).astype(np.float32)
        return (probs[:n] + probs[n:]) / 2, out["features"][:n]

    @torch.inference_mode()
    def _torch_forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        logits, features = model.forward_with_features(batch)
        probs = torch.softmax(logits, dim=1)
        if self.tta:
            probs = (probs + torch.softmax(model(torch.flip(batch, dims=[3])), dim=1)) / 2
        return probs.numpy(), features.float().numpy()

    def predict_paths_array(self, paths: list[str], progress: bool = False, calibrated: bool = True) -> np.ndarray:
        """Probabilities for readable files (already checked), in order; used by evaluation and calibration."""
        ds = CTImageDataset(
            paths, [0] * len(paths), self.card.preprocess, eval_transform(self.card.preprocess), cache=False
        )
        loader = DataLoader(ds, batch_size=self.batch_size)
        batches = tqdm(loader, desc="predicting", disable=not progress, leave=False)
        chunks = [self.probabilities(x, calibrated) for x, _ in batches]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))

    def result(self, path: str, probs: np.ndarray) -> dict:
        """A `lungct predict` JSON line: the file's path, then the prediction's label and probabilities."""
        prediction = Prediction.from_probabilities(self.classes, probs)
        return {"path": path, **prediction.model_dump(mode="json", include=LINE_FIELDS)}

    def predict(self, paths: Iterable[str | Path]) -> Iterator[dict]:
        """One dict per file, in order: a prediction, or `path` and `error` for a file that cannot be read."""
        batch: list[tuple[str, torch.Tensor]] = []
        for path in expand_paths(paths):
            try:
                tensor = prepare_image(self.card.preprocess.load(path), self.card.preprocess)
            except Exception as exc:  # one bad file must not cost the others their results
                yield from self._flush(batch)
                batch = []
                yield {"path": str(path), "error": _read_error(exc)}
                continue
            batch.append((str(path), tensor))
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, torch.Tensor]]) -> Iterator[dict]:
        if not batch:
            return
        probs = self.probabilities(torch.stack([t for _, t in batch]))
        for (path, _), p in zip(batch, probs, strict=True):
            yield self.result(path, p)
