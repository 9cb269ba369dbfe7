"""What the web app does with an upload, without Streamlit: bytes in, a result dict (and overlay PNG) out.

Decoding, limits, prediction, Grad-CAM and the prediction log are lungct.inference.service's, the same
service the REST API runs, so the app and the API cannot disagree on an image. What is left here is the app's
wording: every problem with an upload becomes {"name", "error"}, which the page shows as a message, never as a
traceback. Keeping this out of the page script means it is unit-tested without a browser.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from lungct import explain
from lungct.app.launch import MAX_UPLOAD_MB  # also Streamlit's server.maxUploadSize
from lungct.errors import LungCTError
from lungct.inference.service import Feedback, InferenceService, UploadError, UploadLimits
from lungct.monitoring.predlog import PredictionLog
from lungct.run import RunDir

# The service's limits; only the byte limit is the app's own, because Streamlit refuses larger uploads itself.
LIMITS = UploadLimits(max_file_mb=MAX_UPLOAD_MB)
MAX_UPLOAD_BYTES = LIMITS.max_file_bytes
# of the Prediction (familiar and novelty where the run has a familiarity reference)
RESULT_FIELDS = {"name", "predicted", "probability", "probabilities", "sha256", "prediction_id", "familiar", "novelty"}


def default_log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "predictions.sqlite"


@dataclass
class AppModel:
    """A loaded run's inference service (with the log); one per app process (the page caches it with
    st.cache_resource, so all sessions share it and take turns on its one Grad-CAM explainer)."""

    run: RunDir
    service: InferenceService
    log_error: str | None = None  # why predictions are not being logged, for the page to show

    @property
    def classes(self) -> list[str]:
        return self.service.classes

    @property
    def version(self) -> str:
        return self.service.version

    @property
    def log(self) -> PredictionLog | None:
        return self.service.log

    @property
    def calibrated(self) -> bool:
        return self.service.calibrated


def load_app_model(run_dir: str | Path, log_path: str | Path | None = None, hu_offset: int | None = None) -> AppModel:
    """Load the run (LungCTError with a clear message if it is missing or unfinished) and open its log.

    hu_offset: uploads are 16-bit CT storing HU + hu_offset (lungct.data.images), whatever the run's own.

    A log that cannot be opened does not stop the app: predictions still work and the page says why they
    are not being logged.
    """
    run = RunDir(run_dir)
    if not run.path.exists():
        raise LungCTError(f"run directory not found: {run.path}")
    if not run.path.is_dir():
        raise LungCTError(f"not a run directory: {run.path}")
    run.require_model()
    service = InferenceService(
        run.path,
        limits=LIMITS,
        source="app",
        explainer_factory=lambda: explain.Explainer(run.path, batch_size=1),
        render_overlay=lambda explanation, preprocess, max_side: explain.render_overlay(
            explanation, preprocess, max_side=max_side
        ),
        explain_concurrency=1,
        hu_offset=hu_offset,
    )
    service.preload_explainer()  # the Grad-CAM model loads with the page, not on the first upload
    log_error = None
    try:
        service.log = PredictionLog(log_path or default_log_path(run.path))
    except LungCTError as exc:
        log_error = str(exc)
    return AppModel(run, service, log_error)


def upload_message(error: UploadError, limits: UploadLimits = LIMITS) -> str:
    """The app's wording of an upload the service refused (the API words the same refusal as JSON)."""
    if error.code == "empty_file":
        return "the file is empty"
    if error.code == "file_too_large":
        return f"the file is larger than {limits.max_file_mb:g} MB; a CT slice is far smaller"
    if error.code == "image_too_large" and error.size is not None:
        side = math.isqrt(limits.max_pixels)
        w, h = error.size
        return f"the image is too large ({w}x{h} pixels); the app accepts slices up to {side}x{side}"
    return f"cannot read this file: {error.reason}"


def analyse_upload(model: AppModel, data: bytes, name: str) -> dict:
    """Decode, predict, log and explain one upload (through the inference service).

    Returns {"name", "predicted", "probability", "probabilities", "overlay_png", "latency_ms", "width",
    "height", "sha256", "logged"} or {"name", "error"}. `name` is only shown back to the user; it is never
    logged. `latency_ms` covers decoding, prediction and Grad-CAM (not drawing the overlay).
    """
    service = model.service
    start = time.perf_counter()
    try:
        decoded = service.decode(name, data, keep_image=True)
    except UploadError as exc:
        return {"name": name, "error": upload_message(exc, service.limits)}
    prediction = service.predict([decoded])[0]  # logged here, with source "app"
    img = decoded.image
    explanation = service.explain_image(img, target=prediction.predicted)
    latency_ms = (time.perf_counter() - start) * 1000
    return {
        **prediction.model_dump(by_alias=False, include=RESULT_FIELDS),
        "latency_ms": latency_ms,
        "width": img.width,
        "height": img.height,
        "logged": model.log is not None,
        "overlay_png": service.overlay(explanation),
    }


def record_feedback(model: AppModel, prediction_id: str | None, label: str, reason: str = "") -> tuple[bool, str]:
    """The page's "correct this": (recorded?, what to tell the clinician). Goes to the prediction log beside the
    prediction, as POST /v1/feedback does."""
    if not prediction_id or model.log is None:
        return False, "this prediction was not logged, so a correction cannot be recorded"
    try:
        receipt = model.service.feedback(Feedback(prediction_id=prediction_id, label=label, reason=reason or None))
    except UploadError as exc:
        return False, exc.message
    if receipt.label == receipt.predicted:
        return True, f"recorded: {label} confirmed"
    return True, f"recorded: {receipt.predicted} corrected to {label}"
