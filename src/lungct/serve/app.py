"""The REST API: FastAPI routes over lungct.inference.service (the inference service the web app shares, wired
by lungct.serve.service), with uploads read by lungct.serve.uploads and answers typed by lungct.serve.responses
(FastAPI generates the OpenAPI document from those models).

    GET  /health             liveness and the model version
    GET  /v1/model           classes, backbone, input size, version, backend, calibration, test metrics
    POST /v1/predict         one image (multipart field `file`) -> label, calibrated probabilities, latency
    POST /v1/predict/batch   many images and/or zip archives (fields `files` or `file`) -> one result per file
    POST /v1/explain         one image -> Grad-CAM overlay PNG (or JSON with the PNG in base64)
    POST /v1/feedback        a clinician's label for a logged prediction (JSON) -> the recorded feedback

Model work runs in worker threads behind an anyio CapacityLimiter (settings.workers), so requests are
served concurrently and the event loop only moves bytes. Explanations run beside it, never inside it, on their
own bounded threads with a wait queue and a time limit (lungct.serve.gate), so a slow CAM method cannot starve
predictions or hold up shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter

from lungct import __version__
from lungct.contracts import CamMethod, FileError, Prediction
from lungct.inference.service import Feedback, FeedbackReceipt, InferenceService
from lungct.serve.archive import ZipLimits, is_zip, zip_members
from lungct.serve.errors import ApiError, ErrorBody, install_error_handlers
from lungct.serve.follow import GRACE_S, ModelFollower
from lungct.serve.gate import ExplainGate
from lungct.serve.responses import (
    Batching,
    BatchResponse,
    ExplanationSummary,
    FilePrediction,
    Health,
    Limits,
    ManyImages,
    ModelInfo,
    OneImage,
    PredictResponse,
)
from lungct.serve.service import open_service, read_metrics
from lungct.serve.settings import ServeSettings
from lungct.serve.uploads import Upload, read_uploads

log = logging.getLogger("lungct.serve")

ERROR_TEXT = {
    400: "empty file, malformed multipart body (no boundary, or one over 70 characters), unsafe or broken zip",
    413: "file, request, image, pixels or archive over a limit; too many files",
    415: "not multipart/form-data, or a part whose content type is not an image",
    404: "no prediction with that id in the prediction log",
    422: "unreadable image or invalid parameter",
    500: "unexpected server error (details only in the server log)",
    501: "explanations are not available in this install (the torch-free lungct[serve]); the message names the "
    "extra to install",
    503: "no model loaded",
}
TEXT = TypeAdapter(str).json_schema()  # OpenAPI schemas of headers and of the PNG answer, made by pydantic
BINARY = TypeAdapter(bytes).json_schema()


def _errors(*statuses: int, **text: str) -> dict:
    """The documented error answers of one operation: only those it can give, all in the error JSON shape."""
    return {
        status: {"description": text.get(f"e{status}", ERROR_TEXT[status]), "model": ErrorBody} for status in statuses
    }


GET_ERRORS = _errors(500, 503)
UPLOAD_ERRORS = _errors(400, 413, 415, 422, 500, 503)
EXPLAIN_ERRORS = {
    **UPLOAD_ERRORS,
    503: {
        "description": "no model loaded, or explain_concurrency explanations running and explain_queue waiting",
        "headers": {
            "Retry-After": {
                "description": "seconds to wait before trying again (when explanations are busy)",
                "schema": TEXT,
            }
        },
        "model": ErrorBody,
    },
    504: {"description": "the explanation took longer than explain_timeout_s", "model": ErrorBody},
    **_errors(501),
}
IMAGE_TYPES = "image/png, image/jpeg, image/tiff, image/bmp, application/dicom, application/octet-stream"


def _multipart_body(form: type[BaseModel], many: bool) -> dict:
    """The operation's request body, its schema generated from `form` (lungct.serve.uploads reads the stream
    itself, so FastAPI cannot document the body from the endpoint's parameters)."""
    (field,) = form.model_fields
    what = form.model_fields[field].description
    return {
        "requestBody": {
            "required": True,
            "description": f"multipart/form-data with field `{field}`: {what}, sent as files (parts with a "
            "filename, as `curl -F field=@path` sends them). Other form fields, and parts without a filename, "
            "are ignored.",
            "content": {
                "multipart/form-data": {
                    "schema": form.model_json_schema(),
                    "encoding": {field: {"contentType": IMAGE_TYPES + (", application/zip" if many else "")}},
                }
            },
        }
    }


EXPLAIN_HEADERS = {
    name: {"description": text, "schema": TEXT}
    for name, text in {
        "X-Lungct-Label": "the class explained",
        "X-Lungct-Predicted": "the predicted class",
        "X-Lungct-Probability": "the probability of the class explained",
        "X-Lungct-Model-Version": "the model version",
    }.items()
}


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The API for `settings.run`; with no settings, a model-less app (for the OpenAPI schema) that answers 503.

    The run is loaded here, so a missing or broken run fails at startup with a LungCTError.
    """
    follower = ModelFollower(settings) if settings is not None and settings.model_uri else None
    if follower is not None:
        settings = follower.resolve()  # the alias's version, downloaded: served like any run from here on
    service = open_service(settings) if settings is not None else None
    # what answers now: swapped as a whole when a followed alias moves (lungct.serve.follow)
    current: dict = {"service": service}
    current["metrics"] = read_metrics(settings.run) if settings is not None else (None, "")
    limiter: dict[str, anyio.CapacityLimiter] = {}
    gates: dict[str, ExplainGate] = {}

    def swap(new_settings: ServeSettings) -> None:
        """Load a new version (in a worker thread), then make it the one that answers; close the old one later."""
        new_service = open_service(new_settings)
        old = current["service"]
        current.update(service=new_service, metrics=read_metrics(new_settings.run))
        app.state.service = new_service
        log.info("now serving %s", new_service.version)
        delay = new_settings.shutdown_timeout_s + GRACE_S
        threading.Timer(delay, old.close).start()  # requests already on the old service finish on it

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limiter["model"] = anyio.CapacityLimiter(settings.workers if settings else 1)
        if settings is not None:  # explanations: their own threads, queue and time limit (lungct.serve.gate)
            gates["explain"] = ExplainGate(
                settings.explain_concurrency, settings.explain_queue, settings.explain_timeout_s
            )
        app.state.explain_gate = gates.get("explain")
        watcher = asyncio.create_task(follower.watch(swap)) if follower is not None else None
        yield
        if watcher is not None:
            watcher.cancel()
        if current["service"] is not None:
            current["service"].close()

    app = FastAPI(
        title="lungct",
        version=__version__,
        summary="Lung CT slice classification: calibrated predictions and Grad-CAM explanations.",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    if service is not None:
        _document_classes(app, service.classes)

    def need() -> InferenceService:
        if current["service"] is None:
            raise ApiError(503, "no_model", "no model is loaded")
        return current["service"]

    async def in_worker(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter.get("model"))

    @app.get("/health", response_description="the service is up", responses=GET_ERRORS)
    async def health() -> Health:
        s = need()
        return Health(status="ok", model_version=s.version, backend=s.predictor.backend)

    @app.get("/v1/model", response_description="what answers predictions", responses=GET_ERRORS)
    async def model_info() -> ModelInfo:
        s = need()
        pre = s.card.preprocess
        cal = s.predictor.calibration
        return ModelInfo(
            model_version=s.version,
            classes=s.classes,
            backbone=s.card.arch,
            timm_name=s.card.timm_name,
            input_size=pre.input_size,
            color=pre.color,
            positive_class=s.card.positive_class,
            pretrained=s.card.pretrained,
            calibration=None if cal is None else cal.to_dict()["method"],
            tta=s.predictor.tta,
            backend=s.predictor.backend,
            backend_reason=s.predictor.backend_reason,
            precision=s.predictor.precision,
            batching=Batching(
                enabled=s.batcher is not None,
                max_size=settings.batch_max_size,
                wait_ms=settings.batch_wait_ms,
                model_batch_size=settings.model_batch_size,
                batches=s.batcher.batches if s.batcher else 0,
                requests=s.batcher.items if s.batcher else 0,
            ),
            explain_available=s.explain_unavailable is None,
            test_metrics=current["metrics"][0],
            test_metrics_status=current["metrics"][1],
            model_uri=settings.model_uri,
            limits=Limits.model_validate(settings.model_dump(include=set(Limits.model_fields))),
        )

    @app.post(
        "/v1/predict",
        response_description="the prediction",
        responses=UPLOAD_ERRORS,
        openapi_extra=_multipart_body(OneImage, False),
    )
    async def predict(request: Request) -> PredictResponse:
        s = need()
        upload = await _single_upload(request, settings)
        start = time.perf_counter()
        if s.batcher is None:
            prediction = await in_worker(
                lambda: s.predict([s.decode(upload.name, upload.data, upload.content_type)])[0]
            )
        else:  # decoded and predicted on a call thread, with whatever else is waiting (lungct.inference.batching)
            prediction = await asyncio.wrap_future(s.submit_upload(upload.name, upload.data, upload.content_type))
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        return PredictResponse.model_validate({**prediction.model_dump(), "latency_ms": latency_ms})

    @app.post(
        "/v1/predict/batch",
        response_description="one result per file; a file that fails has `error` instead of a label",
        responses=UPLOAD_ERRORS,
        openapi_extra=_multipart_body(ManyImages, True),
    )
    async def predict_batch(request: Request) -> BatchResponse:
        s = need()
        cfg = settings
        uploads = await read_uploads(
            request, cfg.max_file_bytes, cfg.max_batch_bytes, cfg.max_batch_files, ("files", "file")
        )
        if not uploads:
            raise ApiError(
                400,
                "missing_file",
                "no files: send images or zip archives as files in multipart field 'files' (curl -F files=@PATH)",
            )
        start = time.perf_counter()
        results = await in_worker(_run_batch, s, cfg, uploads)
        n_ok = sum(isinstance(r, Prediction) for r in results)
        return BatchResponse(
            model_version=s.version,
            backend=s.predictor.backend,
            n_files=len(results),
            n_ok=n_ok,
            n_failed=len(results) - n_ok,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
            results=[_batch_item(r) for r in results],
        )

    @app.post(
        "/v1/explain",
        responses={
            200: {
                "description": "Grad-CAM overlay (output=png: image/png, the X-Lungct-* headers carry the result) "
                "or its summary (output=json)",
                "headers": EXPLAIN_HEADERS,
                "model": ExplanationSummary,
                "content": {"image/png": {"schema": BINARY}},
            },
            **EXPLAIN_ERRORS,
        },
        openapi_extra=_multipart_body(OneImage, False),
    )
    async def explain(
        request: Request,
        method: Annotated[CamMethod, Query(description="CAM method")] = CamMethod.gradcam,
        target: Annotated[str | None, Query(description="class to explain (default: the predicted one)")] = None,
        output: Annotated[Literal["png", "json"], Query(description="PNG bytes, or JSON with a base64 PNG")] = "png",
    ) -> Response:
        s = need()
        s.require_explanations()  # 501 before the upload is read: a torch-free server cannot explain
        if target is not None and target not in s.classes:
            raise ApiError(422, "invalid_parameter", f"target {target!r} is not one of: {', '.join(s.classes)}")
        upload = await _single_upload(request, settings)
        start = time.perf_counter()
        gate = gates["explain"]  # never the prediction limiter: a slow CAM must not starve predictions
        explanation, png = await gate.run(s.explain, upload.name, upload.data, upload.content_type, method, target)
        if output == "json":
            summary = ExplanationSummary.model_validate(
                {
                    **explanation.to_dict(),
                    "file": upload.name,
                    "model_version": s.version,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                    "overlay_png_base64": base64.b64encode(png).decode(),
                }
            )
            return JSONResponse(summary.model_dump(mode="json"))
        headers = {
            "X-Lungct-Label": explanation.label,
            "X-Lungct-Predicted": explanation.predicted,
            "X-Lungct-Probability": f"{explanation.probability:.6f}",
            "X-Lungct-Model-Version": s.version,
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.post(
        "/v1/feedback",
        status_code=201,
        response_description="the feedback, recorded in the prediction log beside the prediction",
        responses=_errors(
            400,
            404,
            422,
            500,
            503,
            e400="a body that is not JSON",
            e422="a label that is not one of the model's classes, or a body without the required fields",
            e503="no model loaded, or the server does not log predictions (--no-log)",
        ),
    )
    async def feedback(body: Feedback) -> FeedbackReceipt:
        s = need()
        return await in_worker(s.feedback, body)

    return app


def _document_classes(app: FastAPI, classes: list[str]) -> None:
    """The served schema names the loaded model's classes as the values `target` and a feedback's `label` take
    (docs/openapi.json, made without a model, says only "a class name")."""
    base = app.openapi
    target_schema = TypeAdapter(Literal[tuple(classes)]).json_schema()

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = base()
            for param in schema["paths"]["/v1/explain"]["post"].get("parameters", []):
                if param["name"] == "target":
                    param["schema"] = {**target_schema, "description": param.get("description")}
            label = schema["components"]["schemas"]["Feedback"]["properties"]["label"]
            label.update({k: v for k, v in target_schema.items() if k != "title"})
            for key in ("minLength", "maxLength"):
                label.pop(key, None)
        return app.openapi_schema

    app.openapi = openapi


async def _single_upload(request: Request, settings: ServeSettings) -> Upload:
    files = await read_uploads(request, settings.max_file_bytes, settings.max_file_bytes, 1, ("file",))
    if not files:
        raise ApiError(
            400, "missing_file", "no file: send the image as a file in multipart field 'file' (curl -F file=@PATH)"
        )
    return files[0]


def _batch_item(result: Prediction | FileError) -> FilePrediction | FileError:
    """A batch lists predictions without model_version and backend: the batch names them once."""
    return FilePrediction.model_validate(result.model_dump()) if isinstance(result, Prediction) else result


def _run_batch(s: InferenceService, cfg: ServeSettings, uploads: list[Upload]) -> list[Prediction | FileError]:
    """Unpack the zip archives among the uploads, then predict every file; one entry per file, in order."""
    entries: list[tuple[str, bytes, str]] = []
    for up in uploads:
        if is_zip(up.data):
            budget = cfg.max_batch_bytes - sum(len(e[1]) for e in entries)  # all archives together stay bounded
            limits = ZipLimits(cfg.max_batch_files - len(entries), cfg.max_file_bytes, budget, cfg.max_zip_ratio)
            entries += [(name, blob, "") for name, blob in zip_members(up.data, up.name, limits)]
        else:
            entries.append((up.name, up.data, up.content_type))
        if len(entries) > cfg.max_batch_files:
            raise ApiError(413, "too_many_files", f"too many files: at most {cfg.max_batch_files} per request")
    return s.predict_files(entries)
