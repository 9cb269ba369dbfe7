"""What the API does with uploads, apart from HTTP: decode with limits, predict in batches, explain, log.

Everything here is blocking (decoding, ONNX Runtime / PyTorch, Grad-CAM); lungct.serve.app calls it in
worker threads through a bounded limiter so the event loop never waits on a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lungct.data.images import ImageReadError
from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.monitoring.predlog import PredictionLog, PredictionRecord, image_stats
from lungct.serve.errors import ApiError
from lungct.serve.settings import ServeSettings

log = logging.getLogger("lungct.serve")

# Uploads whose declared type cannot be a CT slice are refused before decoding; "" and octet-stream are what
# clients send when they do not know (curl for .dcm), so the bytes decide then.
ACCEPTED_TYPES = ("image/", "application/dicom", "application/octet-stream", "application/x-dicom")
SUMMARY_METRICS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "data")


@dataclass
class Decoded:
    """An upload ready for the model: its input tensor and what the prediction log keeps (never the image)."""

    name: str
    sha256: str
    tensor: torch.Tensor
    stats: dict[str, float]
    decode_ms: float


class PixelBudget:
    """The decoded pixels one request may still use (settings.max_request_pixels), all its images together.

    max_pixels bounds one image; this bounds the request, so that a batch or zip of 200 images each just
    under max_pixels (a few kB each as PNG) cannot buy minutes of decoding.
    """

    CODE = "too_many_pixels"

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def error(self, total: int) -> ApiError:
        return ApiError(
            413,
            self.CODE,
            f"the images in this request decode to {total:,} pixels, over the {self.limit:,} pixel limit per "
            "request (max_request_pixels); send fewer or smaller images per request",
        )

    def take(self, pixels: int) -> None:
        self.used += pixels
        if self.used > self.limit:
            raise self.error(self.used)


def check_content_type(name: str, content_type: str) -> None:
    if content_type and not content_type.startswith(ACCEPTED_TYPES):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{name}: content type {content_type} is not an image; send PNG, JPEG, TIFF, BMP or DICOM",
        )


def probe_pixels(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, before anything is decoded; None when the header says nothing."""
    from lungct.dicom.read import has_dicom_preamble

    if has_dicom_preamble(data[:132]):
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception:  # any parsing failure is reported by the full read, with its reason
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                return img.size
    except Exception:  # not an image Pillow reads, or past its bomb limit: the full decode says which
        return None


def read_metrics(run_dir: Path) -> tuple[dict | None, str]:
    """The run's headline test metrics (RUN/eval/metrics.json) or None with a one-line reason."""
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return None, f"absent: {path.name} not found in RUN/eval (run lungct evaluate --run RUN --out RUN/eval)"
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        return None, f"unreadable: {exc}"
    summary = {k: metrics[k] for k in SUMMARY_METRICS if k in metrics}
    if isinstance(metrics.get("ci95"), dict):
        summary["ci95"] = metrics["ci95"]
    return summary, "present: RUN/eval/metrics.json"


class ModelService:
    """One loaded run: predictor (ONNX Runtime or PyTorch), a lazily made Grad-CAM explainer, the log."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        run = settings.run
        if not run.is_dir():
            raise LungCTError(f"run directory not found: {run}")
        self.predictor = Predictor(run, tta=settings.tta, backend=settings.backend, threads=settings.model_threads)
        self.version = self.predictor.model_version
        self.card = self.predictor.card
        self.metrics, self.metrics_status = read_metrics(run)
        path = settings.resolved_log_path
        self.log = PredictionLog(path) if path is not None else None
        if settings.keep_uploads is not None:
            settings.keep_uploads.mkdir(parents=True, exist_ok=True)
        self._idle_explainers: queue.SimpleQueue = queue.SimpleQueue()  # see _borrow_explainer
        self._explainer_load = threading.Lock()  # one model load at a time

    # -- decoding -------------------------------------------------------------------------------------------
    def decode(self, name: str, data: bytes, content_type: str = "", budget: PixelBudget | None = None) -> Decoded:
        """An upload to a model input, or ApiError naming the problem (empty, wrong type, too big, unreadable)."""
        start = time.perf_counter()
        if not data:
            raise ApiError(400, "empty_file", f"{name}: the file is empty (0 bytes)")
        check_content_type(name, content_type)
        img = self.decode_image(name, data, budget)
        tensor = prepare_image(img, self.card.preprocess)
        sha256 = hashlib.sha256(data).hexdigest()
        if self.settings.keep_uploads is not None:  # opt-in only; named by content, never by the client's name
            suffix = Path(name).suffix.lower()[:8] if Path(name).suffix.isascii() else ""
            (self.settings.keep_uploads / f"{sha256}{suffix}").write_bytes(data)
        return Decoded(name, sha256, tensor, image_stats(img), (time.perf_counter() - start) * 1000)

    def decode_image(self, name: str, data: bytes, budget: PixelBudget | None = None) -> Image.Image:
        """The decoded slice; ApiError 413 past max_pixels (judged on the header first) or the request's budget."""
        limit = self.settings.max_pixels
        budget = budget or PixelBudget(self.settings.max_request_pixels)
        size = probe_pixels(data)
        if size is not None and size[0] * size[1] > limit:
            w, h = size
            raise ApiError(
                413, "image_too_large", f"{name}: {w}x{h} pixels is over the {limit / 1e6:g} megapixel limit"
            )
        if size is not None:
            budget.take(size[0] * size[1])
        try:
            img = self.card.preprocess.load_bytes(data, name)
        except ImageReadError as exc:
            if exc.reason.startswith("image too large"):
                raise ApiError(413, "image_too_large", f"{name}: {exc.reason}") from None
            raise ApiError(422, "unreadable_image", f"{name}: {exc.reason}") from None
        if img.width * img.height > limit:  # formats whose header the probe could not read
            raise ApiError(413, "image_too_large", f"{name}: {img.width}x{img.height} pixels is over the limit")
        if size is None:
            budget.take(img.width * img.height)
        return img

    # -- prediction -----------------------------------------------------------------------------------------
    def predict(self, items: list[Decoded]) -> list[dict]:
        """One result per decoded upload, in order, each logged; batched through the predictor."""
        results: list[dict] = []
        size = self.predictor.batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            t0 = time.perf_counter()
            probs, features = self.predictor.probabilities_and_features(torch.stack([d.tensor for d in chunk]))
            share = (time.perf_counter() - t0) * 1000 / len(chunk)
            for d, p, f in zip(chunk, probs, features, strict=True):
                results.append(self._result(d, p, f, d.decode_ms + share))
        return results

    def _result(self, d: Decoded, probs: np.ndarray, features: np.ndarray, latency_ms: float) -> dict:
        classes = self.card.classes
        probabilities = {c: round(float(v), 6) for c, v in zip(classes, probs, strict=True)}
        label = classes[int(np.argmax(probs))]
        if self.log is not None:
            self.log.append(
                PredictionRecord(
                    sha256=d.sha256,
                    model_version=self.version,
                    label=label,
                    probabilities=probabilities,
                    latency_ms=latency_ms,
                    stats=d.stats,
                    source="api",
                    embedding=features,
                )
            )
        return {
            "file": d.name,
            "label": label,
            "confidence": probabilities[label],
            "probabilities": probabilities,
            "sha256": d.sha256,
            "latency_ms": round(latency_ms, 2),
        }

    # -- explanation ----------------------------------------------------------------------------------------
    def _borrow_explainer(self):
        """An idle Explainer, or a new one. Grad-CAM hooks its model, so each running explanation has its own;
        the app's ExplainGate runs at most explain_concurrency at once, which bounds how many are made."""
        from lungct.explain.explainer import Explainer

        try:
            return self._idle_explainers.get_nowait()
        except queue.Empty:
            pass
        with self._explainer_load:
            return Explainer(self.settings.run, batch_size=1)

    def explain(self, name: str, data: bytes, content_type: str, method: str, target: str | None):
        """(Explanation, PNG overlay bytes) for one upload; Grad-CAM runs on the PyTorch model."""
        from lungct.explain.overlay import render_overlay

        if not data:
            raise ApiError(400, "empty_file", f"{name}: the file is empty (0 bytes)")
        check_content_type(name, content_type)
        img = self.decode_image(name, data)
        explainer = self._borrow_explainer()
        try:
            explanation = explainer.explain_images([img], method=method, target=target, paths=[name])[0]
        except LungCTError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
        finally:
            self._idle_explainers.put(explainer)
        png = render_overlay(explanation, self.card.preprocess, max_side=self.settings.explain_max_side)
        return explanation, png

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
