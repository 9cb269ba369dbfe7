"""The API's answers and multipart bodies as pydantic models: FastAPI generates the OpenAPI document from them.

Predictions are lungct.contracts.Prediction (and FileError for a batch file that failed); the models here only
say which of a Prediction's optional fields an answer always carries, and wrap them in their envelopes.
The multipart bodies are read from the request stream by lungct.serve.uploads, never by FastAPI: their models
serve the document only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from lungct.contracts import CamMethod, FileError, Prediction, ServedBackend


class FilePrediction(Prediction):
    """A prediction of one uploaded file, as a batch lists it (model_version and backend are the batch's)."""

    name: str = Field(alias="file", description="the upload's file name (last path component only)")
    sha256: str = Field(description="of the uploaded bytes; the prediction log's key")
    latency_ms: float
    model_version: SkipJsonSchema[str | None] = Field(None, exclude=True)
    backend: SkipJsonSchema[ServedBackend | None] = Field(None, exclude=True)


class PredictResponse(Prediction):
    """/v1/predict: one file's prediction and the model that made it."""

    name: str = Field(alias="file", description="the upload's file name (last path component only)")
    sha256: str = Field(description="of the uploaded bytes; the prediction log's key")
    latency_ms: float
    model_version: str
    backend: ServedBackend


class BatchResponse(BaseModel):
    """/v1/predict/batch: one result per file, in upload order (zip members in archive order)."""

    model_version: str
    backend: ServedBackend
    n_files: int
    n_ok: int
    n_failed: int
    latency_ms: float
    results: list[FilePrediction | FileError]


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str
    backend: ServedBackend


class Limits(BaseModel):
    """Every limit that bounds a request (ServeSettings; the upload ones are the inference service's)."""

    max_file_mb: float
    max_batch_files: int
    max_batch_mb: float
    max_pixels: int
    max_request_pixels: int
    max_zip_ratio: float
    explain_max_side: int
    explain_concurrency: int
    explain_queue: int
    explain_timeout_s: float
    workers: int


class Batching(BaseModel):
    """How concurrent /v1/predict requests share model calls (ServeSettings), and how they have so far."""

    enabled: bool
    max_size: int = Field(description="most requests gathered into one batch")
    wait_ms: float = Field(description="longest a request waits for others to join its batch")
    model_batch_size: int = Field(description="most slices in one model call; a larger batch runs in several")
    batches: int = Field(description="batches gathered since the server started")
    requests: int = Field(description="requests answered by them (requests / batches: the mean batch size)")


class ModelInfo(BaseModel):
    """/v1/model: what answers predictions, and how it did on its test part."""

    model_version: str
    classes: list[str]
    backbone: str
    timm_name: str
    input_size: int
    color: str
    positive_class: str | None
    pretrained: bool
    calibration: str | None = Field(description="the calibration method, or null for an uncalibrated run")
    tta: bool
    backend: ServedBackend
    backend_reason: str
    precision: Literal["float", "int8"] = Field(description="int8: the run's checked model.int8.onnx answers")
    batching: Batching
    explain_available: bool = Field(description="false on a torch-free install: /v1/explain answers 501")
    model_uri: str | None = Field(None, description="the registry alias followed (models:/NAME@ALIAS), if any")
    test_metrics: dict[str, Any] | None = Field(description="headline figures of RUN/eval/metrics.json, or null")
    test_metrics_status: str
    limits: Limits


class ExplanationSummary(BaseModel):
    """/v1/explain?output=json: lungct.explain.Explanation's summary, the file, and the overlay as base64."""

    label: str = Field(description="the class explained")
    probability: float = Field(description="the probability of the class explained")
    predicted: str = Field(description="the predicted class")
    probabilities: dict[str, float]
    method: CamMethod
    layers: str = Field(description="the layers asked for: default, a group name, or layer names")
    n_layers: int
    height: int
    width: int
    file: str
    model_version: str
    latency_ms: float
    overlay_png_base64: str = Field(json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/png"})


class OneImage(BaseModel):
    """multipart/form-data of /v1/predict and /v1/explain."""

    file: bytes = Field(min_length=1, description="one image: PNG, JPEG, TIFF, BMP or DICOM")


class ManyImages(BaseModel):
    """multipart/form-data of /v1/predict/batch. An empty file fails only its own result, not the batch."""

    files: list[bytes] = Field(min_length=1, description="images and/or zip archives, repeated")
