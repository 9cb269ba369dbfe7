"""The one inference service behind the REST API and the web app: uploads in, Predictions and explanations out.

It owns what both front-ends used to do each their own way: the upload limits (one set, `UploadLimits`),
decoding images and DICOM with those limits, calibrated (or raw) probabilities, predictions as
lungct.contracts.Prediction, Grad-CAM explanations and the prediction log. HTTP (multipart, zip archives,
status pages) stays in lungct.serve and Streamlit in lungct.app, which build the service
(lungct.serve.service.open_service, lungct.app.analysis.load_app_model) and keep only their wording of its
errors.

Layering: lungct.inference sits below lungct.explain and lungct.monitoring (import-linter's layers contract),
so this module imports neither. Grad-CAM and the log are plugged in by the layer above as plain objects: an
explainer factory and an overlay renderer (lungct.explain.Explainer and render_overlay), and a
`PredictionSink` (lungct.monitoring.predlog.PredictionLog).

Everything here blocks (decoding, ONNX Runtime / PyTorch, Grad-CAM): the API calls it from worker threads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from lungct.contracts import Backend, CamMethod, ErrorDetail, FileError, Prediction
from lungct.data.images import ImageReadError
from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.inference.batching import MicroBatcher
from lungct.inference.predictor import Predictor

log = logging.getLogger("lungct.inference")

MB = 1024 * 1024
# Uploads whose declared type cannot be a CT slice are refused before decoding; "" and octet-stream are what
# clients send when they do not know (curl for .dcm), so the bytes decide then.
Upload = tuple[str, bytes, str]  # (name, bytes, declared content type) as a request brings it
ACCEPTED_TYPES = ("image/", "application/dicom", "application/octet-stream", "application/x-dicom")
EXPLAIN_MAX_SIDE = 1024  # pixels: the largest side of an overlay PNG (lungct.explain.overlay.MAX_SIDE)


class UploadLimits(BaseModel):
    """What one upload, and one request of several, may cost: the API's and the app's limits, defined once.

    max_pixels is 4096 x 4096: a CT slice is 512 to 1024 pixels a side, and Grad-CAM works at the slice's own
    size, so larger images only make explanations slow. max_request_pixels bounds a batch (all its images and
    zip members together), so that 200 images each just under max_pixels cannot buy minutes of decoding.
    """

    model_config = ConfigDict(frozen=True)

    max_file_mb: float = Field(20.0, gt=0, description="largest single upload (and unpacked zip member)")
    max_pixels: int = Field(4096 * 4096, ge=1, description="largest decoded image (width x height)")
    max_request_pixels: int = Field(
        128_000_000, ge=1, description="most decoded pixels per request, all its images and zip members together"
    )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)


class UploadError(Exception):
    """An upload the service refuses, with what the front-ends need to word it: an HTTP status, a stable code,
    the API's message (naming the file), and for the app the decoder's `reason` or the image's `size`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        reason: str | None = None,
        size: tuple[int, int] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason or message
        self.size = size
        self.headers = headers or {}

    def body(self) -> dict:
        """The API's error JSON."""
        return {"error": {"code": self.code, "message": self.message}}

    def detail(self) -> ErrorDetail:
        """What a batch reports for the file that failed."""
        return ErrorDetail(code=self.code, message=self.message, status=self.status)


class PixelBudget:
    """The decoded pixels one request may still use (limits.max_request_pixels), all its images together."""

    CODE = "too_many_pixels"

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def error(self, total: int) -> UploadError:
        return UploadError(
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
        raise UploadError(
            415,
            "unsupported_media_type",
            f"{name}: content type {content_type} is not an image; send PNG, JPEG, TIFF, BMP or DICOM",
        )


def probe_pixels(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, before anything is decoded; None when the header says nothing."""
    from lungct.dicom.detect import has_dicom_preamble

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


class PredictionSink(Protocol):
    """Where served predictions, and clinicians' feedback on them, are recorded:
    lungct.monitoring.predlog.PredictionLog."""

    def image_stats(self, image: Image.Image) -> dict[str, float]: ...

    def record(
        self, prediction: Prediction, *, stats: dict[str, float], embedding: np.ndarray | None, source: str
    ) -> None: ...

    def record_many(
        self, predictions: list[tuple[Prediction, dict[str, float], np.ndarray | None]], *, source: str
    ) -> None: ...

    def prediction(self, prediction_id: str) -> dict | None: ...

    def add_feedback(self, prediction_id: str, label: str, reason: str | None, image: str | None) -> int: ...

    def close(self) -> None: ...


class Feedback(BaseModel):
    """What a clinician says about one prediction: the class that is right, and optionally why."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=64, description="from the prediction's answer")
    label: str = Field(min_length=1, max_length=100, description="the class that is right")
    reason: str | None = Field(None, max_length=500, description="optional free text (kept, at most 500 chars)")


class FeedbackReceipt(BaseModel):
    """The recorded feedback: its id, the prediction it corrects, and whether the slice is kept for retraining."""

    feedback_id: int
    prediction_id: str
    label: str
    predicted: str = Field(description="what the model had answered")
    model_version: str
    image_kept: bool = Field(
        description="true when the server keeps slices for retraining (--keep-feedback-images) and has this one; "
        "false: recorded for monitoring only"
    )


@dataclass
class Decoded:
    """An upload ready for the model: its input array (Preprocess.to_array) and what the log keeps (never the
    image, unless the caller asked to keep it for an explanation)."""

    name: str
    sha256: str
    array: np.ndarray
    stats: dict[str, float]
    decode_ms: float
    image: Image.Image | None = None


class InferenceService:
    """One loaded run: a Predictor (ONNX Runtime or PyTorch), explainers made on demand, the prediction log.

    explainer_factory / render_overlay: lungct.explain's Explainer (a fresh one per call) and render_overlay,
    given by the front-end; without them `explain` is refused. At most explain_concurrency explainers work at
    once, each with its own model (Grad-CAM hooks the model it explains); others wait their turn.
    """

    def __init__(
        self,
        run: str | Path,
        *,
        limits: UploadLimits | None = None,
        backend: Backend | str = Backend.auto,
        tta: bool = False,
        threads: int | None = None,
        log: PredictionSink | None = None,
        source: str = "api",
        keep_uploads: Path | None = None,
        explainer_factory: Callable[[], Any] | None = None,
        render_overlay: Callable[..., bytes] | None = None,
        explain_max_side: int = EXPLAIN_MAX_SIDE,
        explain_concurrency: int = 1,
        explain_unavailable: str | None = None,
        precision: str = "auto",
        int8_max_drop: float = 0.01,
        batch_max_size: int | None = None,
        batch_wait_ms: float = 2.0,
        batch_calls: int = 1,
        model_batch_size: int = 32,
        keep_feedback_images: Path | None = None,
        hu_offset: int | None = None,
    ):
        run = Path(run)
        if not run.is_dir():
            raise LungCTError(f"run directory not found: {run}")
        self.run = run
        self.limits = limits or UploadLimits()
        self.predictor = Predictor(
            run,
            tta=tta,
            backend=backend,
            threads=threads,
            precision=precision,
            int8_max_drop=int8_max_drop,
            batch_size=model_batch_size,
            hu_offset=hu_offset,  # how the uploads store HU, when they are 16-bit exports (lungct.data.images)
        )
        self.version = self.predictor.model_version
        self.card = self.predictor.card
        self.log = log
        self.source = source
        self.keep_uploads = keep_uploads
        if keep_uploads is not None:
            output_folder(keep_uploads, "keep_uploads folder")
        # opt-in: every predicted slice kept as a de-identified PNG named by the upload's sha256, so feedback can
        # point at it for retraining (the decoded pixels only: no file name, no DICOM tag, no metadata)
        self.keep_feedback_images = keep_feedback_images
        if keep_feedback_images is not None:
            output_folder(keep_feedback_images, "keep_feedback_images folder")
        self.explain_max_side = explain_max_side
        # why explanations cannot run here (no PyTorch in a torch-free install): explain() answers 501 with it
        self.explain_unavailable = explain_unavailable
        self._explainer_factory = explainer_factory
        self._render_overlay = render_overlay
        self._idle_explainers: queue.SimpleQueue = queue.SimpleQueue()
        self._explaining = threading.BoundedSemaphore(explain_concurrency)
        self._explainer_load = threading.Lock()  # one model load at a time
        # concurrent single predictions share model calls (lungct.inference.batching), each upload decoded on the
        # call thread that predicts it (submit_upload); None: each call its own
        self.batcher: MicroBatcher[Upload, Decoded, Prediction] | None = None
        if batch_max_size is not None and batch_max_size > 1:
            self.batcher = MicroBatcher(
                lambda items: self.predict(items),
                batch_max_size,
                batch_wait_ms,
                batch_calls,
                prepare=lambda upload: self.decode(*upload),
            )

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def calibrated(self) -> bool:
        return self.predictor.calibration is not None

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """N x classes for a preprocessed batch; calibrated=False gives the model's own softmax."""
        return self.predictor.probabilities(batch, calibrated=calibrated)

    # -- decoding -------------------------------------------------------------------------------------------
    def decode(
        self,
        name: str,
        data: bytes,
        content_type: str = "",
        budget: PixelBudget | None = None,
        keep_image: bool = False,
    ) -> Decoded:
        """An upload to a model input, or UploadError naming the problem (empty, too big, wrong type, unreadable)."""
        start = time.perf_counter()
        if not data:
            raise UploadError(400, "empty_file", f"{name}: the file is empty (0 bytes)")
        if len(data) > self.limits.max_file_bytes:  # the API stops such a file while it streams; the app here
            raise UploadError(
                413, "file_too_large", f"file {name!r} is larger than the {self.limits.max_file_mb:g} MB limit"
            )
        check_content_type(name, content_type)
        img = self.decode_image(name, data, budget)
        array = self.card.preprocess.to_array(img)
        sha256 = hashlib.sha256(data).hexdigest()
        if self.keep_uploads is not None:  # opt-in only; named by content, never by the client's name
            suffix = Path(name).suffix.lower()[:8] if Path(name).suffix.isascii() else ""
            (self.keep_uploads / f"{sha256}{suffix}").write_bytes(data)
        if self.keep_feedback_images is not None:
            kept = self.keep_feedback_images / f"{sha256}.png"
            if not kept.exists():
                img.save(kept, format="PNG")  # a fresh PNG: Pillow writes no text chunks unless asked
        stats = self.log.image_stats(img) if self.log is not None else {}
        elapsed = (time.perf_counter() - start) * 1000
        return Decoded(name, sha256, array, stats, elapsed, img if keep_image else None)

    def decode_image(self, name: str, data: bytes, budget: PixelBudget | None = None) -> Image.Image:
        """The decoded slice; UploadError 413 past max_pixels (judged on the header first) or the request's budget."""
        limit = self.limits.max_pixels
        budget = budget or PixelBudget(self.limits.max_request_pixels)
        size = probe_pixels(data)
        if size is not None and size[0] * size[1] > limit:
            w, h = size
            raise UploadError(
                413,
                "image_too_large",
                f"{name}: {w}x{h} pixels is over the {limit / 1e6:g} megapixel limit",
                size=size,
            )
        if size is not None:
            budget.take(size[0] * size[1])
        try:
            img = self.card.preprocess.load_bytes(data, name)
        except ImageReadError as exc:
            if exc.reason.startswith("image too large"):
                raise UploadError(413, "image_too_large", f"{name}: {exc.reason}", reason=exc.reason) from None
            raise UploadError(422, "unreadable_image", f"{name}: {exc.reason}", reason=exc.reason) from None
        if img.width * img.height > limit:  # formats whose header the probe could not read
            raise UploadError(
                413,
                "image_too_large",
                f"{name}: {img.width}x{img.height} pixels is over the limit",
                size=(img.width, img.height),
            )
        if size is None:
            budget.take(img.width * img.height)
        return img

    # -- prediction -----------------------------------------------------------------------------------------
    def predict(self, items: list[Decoded]) -> list[Prediction]:
        """One Prediction per decoded upload, in order, each logged; model calls of at most `model_batch_size`
        slices, and one prediction-log write for all of them."""
        results: list[Prediction] = []
        logged: list[tuple[Prediction, dict[str, float], np.ndarray | None]] = []
        size = self.predictor.batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            t0 = time.perf_counter()
            probs, features = self.predictor.probabilities_and_features(np.stack([d.array for d in chunk]))
            share = (time.perf_counter() - t0) * 1000 / len(chunk)
            for d, p, f, familiarity in zip(chunk, probs, features, self.predictor.context(features), strict=True):
                prediction = Prediction.from_probabilities(
                    self.card.classes,
                    p,
                    **familiarity,
                    name=d.name,
                    sha256=d.sha256,
                    latency_ms=round(d.decode_ms + share, 2),
                    model_version=self.version,
                    backend=self.predictor.backend,
                    prediction_id=uuid.uuid4().hex if self.log is not None else None,
                )
                results.append(prediction)
                logged.append((prediction, d.stats, f))
        if self.log is not None:  # before anyone is answered: a prediction id handed out is already in the log
            self.log.record_many(logged, source=self.source)
        return results

    def submit_upload(self, name: str, data: bytes, content_type: str = "") -> Future[Prediction]:
        """One upload's Prediction through the batcher: decoded and predicted on a call thread; the future raises
        the decoding's UploadError for a bad file."""
        if self.batcher is None:
            raise RuntimeError("this service does not batch (batch_max_size below 2)")
        return self.batcher.submit((name, data, content_type))

    def predict_files(self, files: list[tuple[str, bytes, str]]) -> list[Prediction | FileError]:
        """(name, bytes, content type) of a batch -> one result per file, in order: a Prediction, or a FileError
        for a file that cannot be used (the others are still predicted).

        The request's pixels are judged from the headers before anything is decoded (and counted again, for the
        formats whose header says nothing, while decoding): over max_request_pixels the whole batch is refused.
        """
        budget = PixelBudget(self.limits.max_request_pixels)
        declared = sum(w * h for w, h in filter(None, (probe_pixels(data) for _, data, _ in files)))
        if declared > budget.limit:
            raise budget.error(declared)
        slots: list[FileError | None] = []
        decoded: list[Decoded] = []
        for name, data, content_type in files:
            try:
                decoded.append(self.decode(name, data, content_type, budget))
                slots.append(None)
            except UploadError as exc:
                if exc.code == PixelBudget.CODE:
                    raise
                slots.append(FileError(name=name, error=exc.detail()))
            except Exception:  # a bug, not the client's fault: logged, and only this file fails
                log.exception("unexpected error decoding a batch file")
                message = "internal server error; the server log has the details"
                slots.append(
                    FileError(name=name, error=ErrorDetail(code="internal_error", message=message, status=500))
                )
        predictions = iter(self.predict(decoded))
        return [slot if slot is not None else next(predictions) for slot in slots]

    # -- explanation ----------------------------------------------------------------------------------------
    def _borrow_explainer(self):
        """An idle explainer, or a new one (lungct.explain.Explainer, made by the front-end's factory)."""
        try:
            return self._idle_explainers.get_nowait()
        except queue.Empty:
            pass
        if self._explainer_factory is None:
            raise LungCTError("this service was started without explanations")
        with self._explainer_load:
            return self._explainer_factory()

    def preload_explainer(self) -> None:
        """Make one explainer now, so the first explanation does not wait for a model load (the app)."""
        self._idle_explainers.put(self._borrow_explainer())

    @contextmanager
    def _explainer(self) -> Iterator[Any]:
        """A borrowed explainer, given back after use; waits while explain_concurrency are at work."""
        with self._explaining:
            explainer = self._borrow_explainer()
            try:
                yield explainer
            finally:
                self._idle_explainers.put(explainer)

    def explain_image(
        self, image: Image.Image, method: str = CamMethod.gradcam, target: str | None = None, name: str | None = None
    ):
        """A Grad-CAM Explanation (lungct.explain.Explanation) of a decoded slice; `target` defaults to the
        predicted class."""
        with self._explainer() as explainer:
            return explainer.explain_images([image], method=method, target=target, paths=[name])[0]

    def overlay(self, explanation) -> bytes:
        """The explanation drawn over its slice: PNG bytes at most explain_max_side pixels a side."""
        if self._render_overlay is None:
            raise LungCTError("this service was started without explanations")
        return self._render_overlay(explanation, self.card.preprocess, max_side=self.explain_max_side)

    def explain(self, name: str, data: bytes, content_type: str, method: str, target: str | None):
        """(Explanation, PNG overlay bytes) for one upload; Grad-CAM runs on the PyTorch model."""
        self.require_explanations()
        if not data:
            raise UploadError(400, "empty_file", f"{name}: the file is empty (0 bytes)")
        check_content_type(name, content_type)
        img = self.decode_image(name, data)
        with self._explainer() as explainer:
            try:
                explanation = explainer.explain_images([img], method=method, target=target, paths=[name])[0]
            except LungCTError as exc:  # an unknown method, class or layer
                raise UploadError(400, "invalid_parameter", str(exc)) from None
        return explanation, self.overlay(explanation)

    # -- feedback -------------------------------------------------------------------------------------------
    def feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Record a clinician's label for a logged prediction: UploadError 503 without a prediction log, 404 for an
        unknown prediction id, 422 for a label that is not one of the model's classes."""
        if self.log is None:
            raise UploadError(
                503, "no_prediction_log", "feedback needs the prediction log, and this server does not log (--no-log)"
            )
        if feedback.label not in self.classes:
            raise UploadError(
                422, "invalid_label", f"label {feedback.label!r} is not one of: {', '.join(self.classes)}"
            )
        logged = self.log.prediction(feedback.prediction_id)
        if logged is None:
            raise UploadError(404, "unknown_prediction", f"no prediction with id {feedback.prediction_id!r} in the log")
        image = None
        if self.keep_feedback_images is not None:
            path = self.keep_feedback_images / f"{logged['sha256']}.png"
            image = str(path.resolve()) if path.is_file() else None
        feedback_id = self.log.add_feedback(feedback.prediction_id, feedback.label, feedback.reason, image)
        return FeedbackReceipt(
            feedback_id=feedback_id,
            prediction_id=feedback.prediction_id,
            label=feedback.label,
            predicted=logged["label"],
            model_version=logged["model_version"],
            image_kept=image is not None,
        )

    def require_explanations(self) -> None:
        """UploadError 501 naming the extra to install, when this install cannot explain (no PyTorch)."""
        if self.explain_unavailable:
            raise UploadError(501, "explain_unavailable", self.explain_unavailable)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.log is not None:
            self.log.close()
