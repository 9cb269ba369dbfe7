"""Prediction from a run directory: files or folders in, one result per file out.

The Predictor is what the CLI, evaluation, the API and the app share, so they cannot diverge. It runs the
run's model.onnx with ONNX Runtime when that export matches the run's current weights and calibration
(`lungct export`), and the PyTorch model otherwise; `backend` forces one or the other.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import softmax
from tqdm import tqdm

from lungct.contracts import Backend, Prediction
from lungct.data.images import ImageReadError, is_image_file
from lungct.errors import LungCTError
from lungct.files import natural_key
from lungct.inference.calibration import load_calibration
from lungct.inference.familiarity import load_familiarity
from lungct.inference.onnx_runtime import PRECISIONS
from lungct.run import RunDir, load_model, model_version

if TYPE_CHECKING:  # PyTorch is imported only when it answers: an exported run is served without it
    import torch

BACKENDS = tuple(Backend)  # lungct.contracts.Backend is the one list
log = logging.getLogger("lungct")
# what a `lungct predict` line says of a prediction (familiar and novelty where the run has a familiarity reference)
LINE_FIELDS = {"predicted", "probabilities", "familiar", "novelty"}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Folders become the image files under them (natural order); files are kept even if not images.

    Under a folder, an image is a file with an image name, or a DICOM file without one (PACS exports often name
    slices IM0001): `is_dicom_path` reads their header. A folder member with an image name that is not a regular
    file (a FIFO, device or socket) is kept too, so that its result says "not a regular file" instead of it
    vanishing; nothing here opens it. A folder with no image under it is an error: an empty answer to a wrong
    folder would read as "nothing found".
    """
    from lungct.dicom.detect import is_dicom_path

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = [
            f
            for f in p.rglob("*")
            if not f.name.startswith(".") and not f.is_dir() and ((is_image_file(f) and f.exists()) or is_dicom_path(f))
        ]
        if not found:
            raise LungCTError(f"{p}: no images in this folder or below (PNG, JPEG, BMP, TIFF or DICOM files)")
        out += sorted(found, key=lambda f: natural_key(str(f)))
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


def default_threads() -> int:
    """Intra-op threads when none are given: PyTorch's count if it is loaded (both then obey one limit), else
    OMP_NUM_THREADS, else the cores this process may run on."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))


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
    familiarity=False: leave out the run's familiarity reference (`lungct familiarity` fitting a new one).
    hu_offset: the inputs are 16-bit or float files storing HU + hu_offset (lungct.data.images), whatever the run
    was trained on: a model trained on 8-bit lung-window slices then sees such a file in the lung window too.
    threads: ONNX Runtime's intra-op threads (default: PyTorch's thread count when torch is loaded, so both obey
    the same limit; otherwise OMP_NUM_THREADS or the cores this process may use).
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
        precision: str = "auto",
        int8_max_drop: float = 0.01,
        familiarity: bool = True,
        hu_offset: int | None = None,
    ):
        if backend not in BACKENDS:
            raise LungCTError(f"unknown inference backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise LungCTError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.run = RunDir(run_dir)
        self.tta = tta
        self.card = self.run.card()
        if hu_offset is not None:
            self.card = replace(self.card, preprocess=replace(self.card.preprocess, hu_offset=hu_offset))
        self.classes = self.card.classes
        self.batch_size = batch_size
        # The run's calibration (lungct calibrate), or None: applied to every probability we hand out.
        self.calibration = load_calibration(self.run.path, len(self.classes))
        # The run's familiarity reference (lungct familiarity), or None: each prediction says whether its input
        # is like the training images.
        self.familiarity = load_familiarity(self.run.path, self.run.weights) if familiarity else None
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self._onnx = None
        self._graph_calibration: dict | None = None
        self.precision = "float"  # what answers: "int8" only for a checked model.int8.onnx on ONNX Runtime
        self.backend, self.backend_reason = self._choose_backend(backend, threads, precision, int8_max_drop)
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

    def _choose_backend(self, wanted: str, threads: int | None, precision: str, max_drop: float) -> tuple[str, str]:
        if wanted == "torch":
            if precision == "int8":
                raise LungCTError("INT8 runs on ONNX Runtime, not PyTorch: choose --backend onnx or auto")
            return "torch", "PyTorch requested"
        from lungct.inference.onnx_runtime import INT8_ONNX_FILE, ONNX_FILE, export_status, int8_status

        info, reason = None, ""
        if precision != "float":
            info, reason = self._open_graph(
                *int8_status(self.run, self.model_version, max_drop), INT8_ONNX_FILE, threads
            )
            if info is not None:
                self.precision = "int8"
            elif precision == "int8":
                raise LungCTError(f"cannot serve INT8: {reason}")
            else:
                log.debug("float graph: %s", reason)
        if info is None:
            info, reason = self._open_graph(*export_status(self.run, self.model_version), ONNX_FILE, threads)
        if info is None:
            if wanted == "onnx":
                raise LungCTError(f"cannot use the ONNX backend: {reason}")
            if importlib.util.find_spec("torch") is None:
                raise LungCTError(
                    f"cannot use the ONNX backend ({reason}), and the PyTorch fallback needs the 'train' extra: "
                    "export the run where lungct[train] is installed, or pip install 'lungct[train]'"
                )
            log.debug("inference on PyTorch: %s", reason)
            return "torch", f"PyTorch fallback: {reason}"
        cal = info.get("calibration") or {}
        if cal.get("in_graph"):  # the one calibration a graph holds: softmax(logits / T)
            self._graph_calibration = {"method": "temperature", "temperature": cal["temperature"]}
        return "onnx", f"ONNX Runtime: {reason}"

    def _open_graph(self, info: dict | None, reason: str, graph: str, threads: int | None) -> tuple[dict | None, str]:
        """(info, reason) with the graph loaded into self._onnx and its signature checked, or (None, why not)."""
        from lungct.inference.onnx_runtime import OnnxModel

        if info is None:
            return None, reason
        try:
            self._onnx = OnnxModel(self.run.path / graph, threads or default_threads())
            self._onnx.check_signature(self.card.preprocess.input_size, len(self.classes))
        except LungCTError as exc:
            self._onnx = None
            return None, str(exc)
        return info, reason

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Probabilities, N x classes, for a preprocessed NCHW batch: calibrated when the run is, unless
        `calibrated=False` asks for the model's own softmax (what `lungct calibrate` fits on)."""
        return self.probabilities_and_features(batch, calibrated)[0]

    def probabilities_and_features(self, batch: np.ndarray, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, pooled backbone features) for a preprocessed batch (numpy, or a CPU torch tensor); the
        features feed drift reports.

        calibrated=False: the uncalibrated softmax, also on an ONNX graph that holds the temperature (its
        logits are used then), without touching `self.calibration`, so concurrent callers never see it change.
        """
        calibration = self.calibration if calibrated else None
        in_graph = calibration is not None and self._graph_holds(calibration)
        if self.backend == "onnx":
            probs, features = self._onnx_forward(np.asarray(batch, dtype=np.float32), in_graph)
        else:
            probs, features = self._torch_forward(batch)
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

    def _torch_forward(self, batch) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self.model
        with torch.inference_mode():
            batch = torch.as_tensor(batch, dtype=torch.float32)
            logits, features = model.forward_with_features(batch)
            probs = torch.softmax(logits, dim=1)
            if self.tta:
                probs = (probs + torch.softmax(model(torch.flip(batch, dims=[3])), dim=1)) / 2
        return probs.numpy(), features.float().numpy()

    def predict_paths_array(self, paths: list[str], progress: bool = False, calibrated: bool = True) -> np.ndarray:
        """Probabilities for readable files (already checked), in order; used by evaluation and calibration.

        A file unreadable now (a run's split.csv names it, but the dataset moved) is a LungCTError naming it.
        """
        chunks = self._over_paths(paths, progress, lambda batch: self.probabilities(batch, calibrated))
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))

    def features_paths_array(self, paths: list[str], progress: bool = False) -> np.ndarray:
        """Pooled backbone features for readable files, in order, as predict_paths_array reads them."""
        chunks = self._over_paths(paths, progress, lambda batch: self.probabilities_and_features(batch)[1])
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    def _over_paths(self, paths: list[str], progress: bool, model_call) -> list[np.ndarray]:
        pre = self.card.preprocess

        def array(path: str) -> np.ndarray:
            try:
                return pre.to_array(pre.load(path))
            except ImageReadError as exc:
                raise LungCTError(
                    f"cannot read {exc}: the images must stay where the run's split.csv (or the scan of the data) "
                    "found them"
                ) from None

        starts = range(0, len(paths), self.batch_size)
        return [
            model_call(np.stack([array(p) for p in paths[i : i + self.batch_size]]))
            for i in tqdm(starts, desc="predicting", disable=not progress, leave=False)
        ]

    def context(self, features: np.ndarray) -> list[dict]:
        """Each row's `familiar` and `novelty` Prediction fields; empty where the run has no reference."""
        return self.familiarity.context(features) if self.familiarity is not None else [{} for _ in features]

    def result(self, path: str, probs: np.ndarray, **context) -> dict:
        """A `lungct predict` JSON line: the file's path, then the prediction's label and probabilities."""
        prediction = Prediction.from_probabilities(self.classes, probs, **context)
        return {"path": path, **prediction.model_dump(mode="json", include=LINE_FIELDS)}

    def predict(self, paths: Iterable[str | Path]) -> Iterator[dict]:
        """One dict per file, in order: a prediction, or `path` and `error` for a file that cannot be read."""
        batch: list[tuple[str, np.ndarray]] = []
        pre = self.card.preprocess
        for path in expand_paths(paths):
            try:
                array = pre.to_array(pre.load(path))
            except Exception as exc:  # one bad file must not cost the others their results
                yield from self._flush(batch)
                batch = []
                yield {"path": str(path), "error": _read_error(exc)}
                continue
            batch.append((str(path), array))
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, np.ndarray]]) -> Iterator[dict]:
        if not batch:
            return
        probs, features = self.probabilities_and_features(np.stack([a for _, a in batch]))
        for (path, _), p, context in zip(batch, probs, self.context(features), strict=True):
            yield self.result(path, p, **context)
