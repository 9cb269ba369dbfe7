"""What the web app does with an upload, without Streamlit: bytes in, a result dict (and overlay PNG) out.

Keeping this out of the page script means it is unit-tested without a browser, and the page stays a thin
layout of what these functions return. Every problem with an upload becomes {"name", "error"}: the page
shows it as a message, never as a traceback.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lungct.app.launch import MAX_UPLOAD_MB  # also Streamlit's server.maxUploadSize
from lungct.data.images import ImageReadError
from lungct.errors import LungCTError
from lungct.explain.explainer import Explainer
from lungct.explain.overlay import render_overlay
from lungct.monitoring.predlog import PredictionLog, PredictionRecord, image_stats
from lungct.run import RunDir, model_version

MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_SIDE = 4096  # a CT slice is 512-1024 px a side; bigger uploads would only make Grad-CAM slow
MAX_PIXELS = MAX_SIDE * MAX_SIDE


def default_log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "predictions.sqlite"


@dataclass
class AppModel:
    """A loaded run plus the prediction log; one per app process (the page caches it with st.cache_resource)."""

    run: RunDir
    explainer: Explainer
    version: str
    log: PredictionLog | None
    log_error: str | None = None  # why predictions are not being logged, for the page to show
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.explainer.classes)

    @property
    def calibrated(self) -> bool:
        return self.explainer.predictor.calibration is not None


def load_app_model(run_dir: str | Path, log_path: str | Path | None = None) -> AppModel:
    """Load the run (LungCTError with a clear message if it is missing or unfinished) and open its log.

    A log that cannot be opened does not stop the app: predictions still work and the page says why they
    are not being logged.
    """
    run = RunDir(run_dir)
    if not run.path.exists():
        raise LungCTError(f"run directory not found: {run.path}")
    if not run.path.is_dir():
        raise LungCTError(f"not a run directory: {run.path}")
    run.require_model()
    explainer = Explainer(run.path, batch_size=1)
    log, log_error = None, None
    try:
        log = PredictionLog(log_path or default_log_path(run.path))
    except LungCTError as exc:
        log_error = str(exc)
    return AppModel(run, explainer, model_version(run), log, log_error)


def analyse_upload(model: AppModel, data: bytes, name: str) -> dict:
    """Decode, predict, explain and log one upload.

    Returns {"name", "predicted", "probability", "probabilities", "overlay_png", "latency_ms", "width",
    "height", "sha256", "logged"} or {"name", "error"}. `name` is only shown back to the user; it is never
    logged. `latency_ms` covers decoding, prediction and Grad-CAM (not drawing the overlay).
    """
    if not data:
        return {"name": name, "error": "the file is empty"}
    if len(data) > MAX_UPLOAD_BYTES:
        return {"name": name, "error": f"the file is larger than {MAX_UPLOAD_MB} MB; a CT slice is far smaller"}
    pre = model.explainer.card.preprocess
    start = time.perf_counter()
    try:
        img = pre.load_bytes(data, name)
    except ImageReadError as exc:
        return {"name": name, "error": f"cannot read this file: {exc.reason}"}
    if img.width * img.height > MAX_PIXELS:
        return {
            "name": name,
            "error": f"the image is too large ({img.width}x{img.height} pixels); "
            f"the app accepts slices up to {MAX_SIDE}x{MAX_SIDE}",
        }
    with model._lock:  # Grad-CAM hooks the shared model, so sessions take turns
        explanation = model.explainer.explain_images([img])[0]
        latency_ms = (time.perf_counter() - start) * 1000
    sha256 = hashlib.sha256(data).hexdigest()
    result = {
        "name": name,
        "predicted": explanation.predicted,
        "probability": explanation.probabilities[explanation.predicted],
        "probabilities": dict(explanation.probabilities),
        "latency_ms": latency_ms,
        "width": img.width,
        "height": img.height,
        "sha256": sha256,
        "logged": False,
    }
    if model.log is not None:
        model.log.append(
            PredictionRecord(
                sha256=sha256,
                model_version=model.version,
                label=explanation.predicted,
                probabilities={k: round(v, 6) for k, v in explanation.probabilities.items()},
                latency_ms=latency_ms,
                stats=image_stats(img),
                source="app",
                embedding=explanation.features,
            )
        )
        result["logged"] = True
    result["overlay_png"] = render_overlay(explanation, pre)
    return result
