"""Serving settings: one pydantic object, filled from LUNGCT_SERVE_* environment variables and CLI options.

The defaults suit CT slices (a 512x512 JPEG is ~50 kB, a DICOM slice ~0.5 MB) with wide margins, and keep a
hostile client from exhausting memory or time: at most max_batch_mb of uploads and unpacked zip content per
request, each image at most max_pixels once decoded and all of a request's images at most max_request_pixels,
each explanation overlay at most explain_max_side pixels wide and high whatever the upload's shape, and at most
explain_concurrency explanations at work (explain_queue more waiting, each answered within explain_timeout_s)
beside the prediction workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lungct.contracts import Backend
from lungct.inference.service import UploadLimits

MB = 1024 * 1024
UPLOAD = UploadLimits()  # the inference service's limits, shared with the app: their defaults are defined there


class ServeSettings(BaseSettings):
    # inf and nan are refused: "--max-batch-mb inf" passed gt=0 and then failed every batch request with a 500
    # (int(inf) is an OverflowError where the limit turns into bytes)
    model_config = SettingsConfigDict(env_prefix="LUNGCT_SERVE_", extra="forbid", allow_inf_nan=False)

    run: Path | None = Field(None, description="run directory (from lungct train); or model_uri")
    model_uri: str | None = Field(
        None, description="models:/NAME@ALIAS in the MLflow registry (lungct promote): served and followed"
    )
    tracking_uri: str | None = Field(None, description="the MLflow store of model_uri (else MLFLOW_TRACKING_URI)")
    model_cache: Path = Field(
        Path.home() / ".cache" / "lungct" / "models", description="where registry versions are downloaded"
    )
    reload_interval_s: float = Field(
        10.0, gt=0, le=3600, description="how often the alias of model_uri is checked; a move reloads the model"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: Backend = Backend.auto
    precision: Literal["auto", "float", "int8"] = Field(
        "auto", description="auto: the run's checked INT8 graph when it has one (lungct export --quantize int8)"
    )
    int8_max_drop: float = Field(
        0.01, ge=0, le=1, description="INT8 is refused when its export measured a larger balanced-accuracy drop"
    )
    batching: bool = Field(True, description="gather concurrent /v1/predict requests into one model call")
    batch_max_size: int = Field(16, ge=1, le=256, description="most requests gathered into one batch")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="longest a request waits for others to join its batch, in milliseconds"
    )
    # A gathered batch (and a /v1/predict/batch request) runs in model calls of at most this many slices. Larger
    # calls save Python overhead but cost more per slice once the activations outgrow the CPU's cache: INT8
    # MobileNetV2 at 224 px on one thread, 1.5-1.6 ms per slice up to 4, 1.7 at 8, 2.1 at 16 (2-core AVX2 machine;
    # docs/serve.md). The requests still share their decoding thread, log write and answers.
    model_batch_size: int = Field(
        4, ge=1, le=256, description="most slices in one model call; larger batches run in calls of this size"
    )
    tta: bool = False
    hu_offset: int | None = Field(
        None,
        ge=-65536,
        le=65536,
        description="uploads are 16-bit or float CT storing HU + this offset: windowed as DICOM (default: the run's)",
    )
    max_file_mb: float = Field(UPLOAD.max_file_mb, gt=0, description="largest single upload (and unpacked zip member)")
    max_batch_files: int = Field(200, ge=1, description="most images per batch request, zip members included")
    max_batch_mb: float = Field(200.0, gt=0, description="largest batch request, and largest unpacked total")
    max_pixels: int = Field(UPLOAD.max_pixels, ge=1, description="largest decoded image (width x height)")
    max_request_pixels: int = Field(
        UPLOAD.max_request_pixels,
        ge=1,
        description="most decoded pixels per request, all its images and zip members together",
    )
    max_zip_ratio: float = Field(
        100.0, ge=1, description="highest compression ratio of a zip member, or of a whole zip, over 1 MB unpacked"
    )
    explain_max_side: int = Field(
        1024, ge=64, le=8192, description="largest width or height of a /v1/explain overlay PNG, in pixels"
    )
    explain_concurrency: int = Field(
        1, ge=1, le=16, description="explanations running at once, on their own threads (not the prediction workers)"
    )
    explain_queue: int = Field(4, ge=0, le=1000, description="explanations waiting for a slot; past it 503")
    explain_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="time limit of one explanation request, waiting included; past it 504"
    )
    shutdown_timeout_s: float = Field(
        5.0, ge=0, le=3600, description="on SIGTERM, how long unfinished requests get before they are cancelled"
    )
    workers: int = Field(2, ge=1, le=64, description="model calls running at once (threadpool limiter)")
    threads: int | None = Field(None, ge=1, le=64, description="intra-op threads per model call")
    log_path: Path | None = Field(None, description="prediction log (SQLite); default RUN/predictions.sqlite")
    log_predictions: bool = True
    keep_uploads: Path | None = Field(None, description="save accepted uploads here as <sha256><ext>; off by default")
    keep_feedback_images: Path | None = Field(
        None,
        description="keep every predicted slice here as a de-identified PNG named by its sha256, so that feedback "
        "can be exported for retraining; off by default (feedback is then for monitoring only)",
    )

    @model_validator(mode="after")
    def _one_model(self) -> ServeSettings:
        if (self.run is None) == (self.model_uri is None):
            raise ValueError("give exactly one of run (a run directory) and model_uri (models:/NAME@ALIAS)")
        return self

    @property
    def limits(self) -> UploadLimits:
        """What the inference service enforces on each upload (the rest here is HTTP: batches, zips, explain)."""
        return UploadLimits(
            max_file_mb=self.max_file_mb, max_pixels=self.max_pixels, max_request_pixels=self.max_request_pixels
        )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * MB)

    @property
    def resolved_log_path(self) -> Path | None:
        if not self.log_predictions:
            return None
        if self.log_path:
            return self.log_path
        # one log for every version a model URI serves (each row names its model version)
        return self.run / "predictions.sqlite" if self.run else self.model_cache / "predictions.sqlite"

    @property
    def model_threads(self) -> int:
        """Threads per model call: the cores shared out among the concurrent calls, so they don't oversubscribe."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)
