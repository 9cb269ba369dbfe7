"""The REST API: FastAPI routes over lungct.serve.service, with uploads read by lungct.serve.uploads.

    GET  /health             liveness and the model version
    GET  /v1/model           classes, backbone, input size, version, backend, calibration, test metrics
    POST /v1/predict         one image (multipart field `file`) -> label, calibrated probabilities, latency
    POST /v1/predict/batch   many images and/or zip archives (fields `files` or `file`) -> one result per file
    POST /v1/explain         one image -> Grad-CAM overlay PNG (or JSON with the PNG in base64)

Model work runs in worker threads behind an anyio CapacityLimiter (settings.workers), so requests are
served concurrently and the event loop only moves bytes. Explanations run beside it, never inside it, on their
own bounded threads with a wait queue and a time limit (lungct.serve.gate), so a slow CAM method cannot starve
predictions or hold up shutdown.
"""

from __future__ import annotations

import base64
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from lungct import __version__
from lungct.serve.archive import ZipLimits, is_zip, zip_members
from lungct.serve.errors import ERROR_SCHEMA, ApiError, install_error_handlers
from lungct.serve.gate import ExplainGate
from lungct.serve.service import ModelService, PixelBudget, probe_pixels
from lungct.serve.settings import ServeSettings
from lungct.serve.uploads import Upload, read_uploads

log = logging.getLogger("lungct.serve")

ERROR_CONTENT = {"application/json": {"schema": ERROR_SCHEMA}}
ERROR_TEXT = {
    400: "empty file, malformed multipart body (no boundary, or one over 70 characters), unsafe or broken zip",
    413: "file, request, image, pixels or archive over a limit; too many files",
    415: "not multipart/form-data, or a part whose content type is not an image",
    422: "unreadable image or invalid parameter",
    500: "unexpected server error (details only in the server log)",
    503: "no model loaded",
}


def _errors(*statuses: int, **text: str) -> dict:
    """The documented error answers of one operation: only those it can give, all in the error JSON shape."""
    return {
        status: {"description": text.get(f"e{status}", ERROR_TEXT[status]), "content": ERROR_CONTENT}
        for status in statuses
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
                "schema": {"type": "string"},
            }
        },
        "content": ERROR_CONTENT,
    },
    504: {"description": "the explanation took longer than explain_timeout_s", "content": ERROR_CONTENT},
}
IMAGE_TYPES = "image/png, image/jpeg, image/tiff, image/bmp, application/dicom, application/octet-stream"


def _multipart_body(field: str, many: bool) -> dict:
    # An empty upload is a 400 for one file, but only that file's `error` in a batch (failures are per file).
    item = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": item, "minItems": 1} if many else {**item, "minLength": 1}
    what = "images and/or zip archives, repeated" if many else "one image: PNG, JPEG, TIFF, BMP or DICOM"
    return {
        "requestBody": {
            "required": True,
            "description": f"multipart/form-data with field `{field}`: {what}, sent as files (parts with a "
            "filename, as `curl -F field=@path` sends them). Other form fields, and parts without a filename, "
            "are ignored.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {field: {**schema, "description": what}},
                        "required": [field],
                    },
                    "encoding": {field: {"contentType": IMAGE_TYPES + (", application/zip" if many else "")}},
                }
            },
        }
    }


FILE_PREDICTION = {
    "type": "object",
    "required": ["file", "label", "confidence", "probabilities", "sha256", "latency_ms"],
    "properties": {
        "file": {"type": "string", "description": "the upload's file name (last path component only)"},
        "label": {"type": "string"},
        "confidence": {"type": "number", "description": "calibrated probability of label"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "sha256": {"type": "string", "description": "of the uploaded bytes; the prediction log's key"},
        "latency_ms": {"type": "number"},
    },
}
PREDICTION = {
    "type": "object",
    "required": [*FILE_PREDICTION["required"], "model_version", "backend"],
    "properties": {
        **FILE_PREDICTION["properties"],
        "model_version": {"type": "string"},
        "backend": {"type": "string", "enum": ["onnx", "torch"]},
    },
}
FILE_RESULT = {
    "oneOf": [
        FILE_PREDICTION,
        {
            "type": "object",
            "required": ["file", "error"],
            "properties": {
                "file": {"type": "string"},
                "error": {
                    "type": "object",
                    "required": ["code", "message", "status"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "status": {"type": "integer"},
                    },
                },
            },
        },
    ]
}
BATCH = {
    "type": "object",
    "required": ["model_version", "backend", "n_files", "n_ok", "n_failed", "latency_ms", "results"],
    "properties": {
        "model_version": {"type": "string"},
        "backend": {"type": "string"},
        "n_files": {"type": "integer"},
        "n_ok": {"type": "integer"},
        "n_failed": {"type": "integer"},
        "latency_ms": {"type": "number"},
        "results": {"type": "array", "items": FILE_RESULT},
    },
}


HEALTH = {
    "type": "object",
    "required": ["status", "model_version", "backend"],
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "model_version": {"type": "string"},
        "backend": {"type": "string", "enum": ["onnx", "torch"]},
    },
}
MODEL_INFO = {
    "type": "object",
    "required": ["model_version", "classes", "input_size", "backend", "limits"],
    "properties": {
        "model_version": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "input_size": {"type": "integer"},
        "backend": {"type": "string", "enum": ["onnx", "torch"]},
        "limits": {"type": "object", "additionalProperties": {"type": "number"}},
        "test_metrics": {"type": ["object", "null"]},
    },
}
EXPLANATION = {
    "type": "object",
    "required": ["label", "probability", "predicted", "probabilities", "method", "file", "model_version"],
    "properties": {
        "label": {"type": "string"},
        "probability": {"type": "number"},
        "predicted": {"type": "string"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "method": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "file": {"type": "string"},
        "model_version": {"type": "string"},
        "latency_ms": {"type": "number"},
        "overlay_png_base64": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
    },
}
EXPLAIN_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in {
        "X-Lungct-Label": "the class explained",
        "X-Lungct-Predicted": "the predicted class",
        "X-Lungct-Probability": "the probability of the class explained",
        "X-Lungct-Model-Version": "the model version",
    }.items()
}


def _json_response(schema: dict, description: str, errors: dict) -> dict:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}, **errors}


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The API for `settings.run`; with no settings, a model-less app (for the OpenAPI schema) that answers 503.

    The run is loaded here, so a missing or broken run fails at startup with a LungCTError.
    """
    service = ModelService(settings) if settings is not None else None
    limiter: dict[str, anyio.CapacityLimiter] = {}
    gates: dict[str, ExplainGate] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limiter["model"] = anyio.CapacityLimiter(settings.workers if settings else 1)
        if settings is not None:  # explanations: their own threads, queue and time limit (lungct.serve.gate)
            gates["explain"] = ExplainGate(
                settings.explain_concurrency, settings.explain_queue, settings.explain_timeout_s
            )
        app.state.explain_gate = gates.get("explain")
        yield
        if service is not None:
            service.close()

    app = FastAPI(
        title="lungct",
        version=__version__,
        summary="Lung CT slice classification: calibrated predictions and Grad-CAM explanations.",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    if service is not None:
        _document_classes(app, list(service.card.classes))

    def need() -> ModelService:
        if service is None:
            raise ApiError(503, "no_model", "no model is loaded")
        return service

    async def in_worker(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter.get("model"))

    @app.get("/health", responses=_json_response(HEALTH, "the service is up", GET_ERRORS))
    async def health() -> JSONResponse:
        s = need()
        return JSONResponse({"status": "ok", "model_version": s.version, "backend": s.predictor.backend})

    @app.get("/v1/model", responses=_json_response(MODEL_INFO, "what answers predictions", GET_ERRORS))
    async def model_info() -> JSONResponse:
        s = need()
        pre = s.card.preprocess
        cal = s.predictor.calibration
        return JSONResponse(
            {
                "model_version": s.version,
                "classes": list(s.card.classes),
                "backbone": s.card.arch,
                "timm_name": s.card.timm_name,
                "input_size": pre.input_size,
                "color": pre.color,
                "positive_class": s.card.positive_class,
                "pretrained": s.card.pretrained,
                "calibration": None if cal is None else cal.to_dict()["method"],
                "tta": s.predictor.tta,
                "backend": s.predictor.backend,
                "backend_reason": s.predictor.backend_reason,
                "test_metrics": s.metrics,
                "test_metrics_status": s.metrics_status,
                "limits": {
                    "max_file_mb": s.settings.max_file_mb,
                    "max_batch_files": s.settings.max_batch_files,
                    "max_batch_mb": s.settings.max_batch_mb,
                    "max_pixels": s.settings.max_pixels,
                    "max_request_pixels": s.settings.max_request_pixels,
                    "max_zip_ratio": s.settings.max_zip_ratio,
                    "explain_max_side": s.settings.explain_max_side,
                    "explain_concurrency": s.settings.explain_concurrency,
                    "explain_queue": s.settings.explain_queue,
                    "explain_timeout_s": s.settings.explain_timeout_s,
                    "workers": s.settings.workers,
                },
            }
        )

    @app.post(
        "/v1/predict",
        responses=_json_response(PREDICTION, "the prediction", UPLOAD_ERRORS),
        openapi_extra=_multipart_body("file", False),
    )
    async def predict(request: Request) -> JSONResponse:
        s = need()
        upload = await _single_upload(request, s)
        start = time.perf_counter()
        budget = PixelBudget(s.settings.max_request_pixels)
        result = await in_worker(
            lambda: s.predict([s.decode(upload.name, upload.data, upload.content_type, budget)])[0]
        )
        result["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return JSONResponse({**result, "model_version": s.version, "backend": s.predictor.backend})

    @app.post(
        "/v1/predict/batch",
        responses=_json_response(
            BATCH, "one result per file; a file that fails has `error` instead of a label", UPLOAD_ERRORS
        ),
        openapi_extra=_multipart_body("files", True),
    )
    async def predict_batch(request: Request) -> JSONResponse:
        s = need()
        cfg = s.settings
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
        results = await in_worker(_run_batch, s, uploads)
        n_ok = sum("error" not in r for r in results)
        return JSONResponse(
            {
                "model_version": s.version,
                "backend": s.predictor.backend,
                "n_files": len(results),
                "n_ok": n_ok,
                "n_failed": len(results) - n_ok,
                "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                "results": results,
            }
        )

    @app.post(
        "/v1/explain",
        responses={
            200: {
                "description": "Grad-CAM overlay (output=png: image/png, the X-Lungct-* headers carry the result) "
                "or its summary (output=json)",
                "headers": EXPLAIN_HEADERS,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": EXPLANATION},
                },
            },
            **EXPLAIN_ERRORS,
        },
        openapi_extra=_multipart_body("file", False),
    )
    async def explain(
        request: Request,
        method: Annotated[
            Literal["gradcam", "gradcam++", "eigencam", "scorecam"], Query(description="CAM method")
        ] = "gradcam",
        target: Annotated[str | None, Query(description="class to explain (default: the predicted one)")] = None,
        output: Annotated[Literal["png", "json"], Query(description="PNG bytes, or JSON with a base64 PNG")] = "png",
    ) -> Response:
        s = need()
        if target is not None and target not in s.card.classes:
            raise ApiError(422, "invalid_parameter", f"target {target!r} is not one of: {', '.join(s.card.classes)}")
        upload = await _single_upload(request, s)
        start = time.perf_counter()
        gate = gates["explain"]  # never the prediction limiter: a slow CAM must not starve predictions
        explanation, png = await gate.run(s.explain, upload.name, upload.data, upload.content_type, method, target)
        summary = {
            **explanation.to_dict(),
            "file": upload.name,
            "model_version": s.version,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        }
        summary.pop("path", None)
        if output == "json":
            return JSONResponse({**summary, "overlay_png_base64": base64.b64encode(png).decode()})
        headers = {
            "X-Lungct-Label": explanation.label,
            "X-Lungct-Predicted": explanation.predicted,
            "X-Lungct-Probability": f"{explanation.probability:.6f}",
            "X-Lungct-Model-Version": s.version,
        }
        return Response(png, media_type="image/png", headers=headers)

    return app


def _document_classes(app: FastAPI, classes: list[str]) -> None:
    """The served schema names the loaded model's classes as the values `target` takes (docs/openapi.json,
    made without a model, says only "a class name")."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = base()
            for param in schema["paths"]["/v1/explain"]["post"].get("parameters", []):
                if param["name"] == "target":
                    param["schema"] = {"type": "string", "enum": classes, "description": param.get("description")}
        return app.openapi_schema

    app.openapi = openapi


async def _single_upload(request: Request, s: ModelService) -> Upload:
    cfg = s.settings
    files = await read_uploads(request, cfg.max_file_bytes, cfg.max_file_bytes, 1, ("file",))
    if not files:
        raise ApiError(
            400, "missing_file", "no file: send the image as a file in multipart field 'file' (curl -F file=@PATH)"
        )
    return files[0]


def _run_batch(s: ModelService, uploads: list[Upload]) -> list[dict]:
    """Decode every file (zip members included), predict the readable ones; one entry per file, in order."""
    cfg = s.settings
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
    # The request's pixels, judged from the headers before anything is decoded (and counted again, for the
    # formats whose header says nothing, while decoding): over max_request_pixels the whole request is refused.
    budget = PixelBudget(cfg.max_request_pixels)
    declared = sum(w * h for w, h in filter(None, (probe_pixels(data) for _, data, _ in entries)))
    if declared > budget.limit:
        raise budget.error(declared)
    slots: list[dict | None] = []
    decoded = []
    for name, data, ctype in entries:
        try:
            decoded.append(s.decode(name, data, ctype, budget))
            slots.append(None)
        except ApiError as exc:
            if exc.code == PixelBudget.CODE:
                raise
            slots.append({"file": name, "error": {"code": exc.code, "message": exc.message, "status": exc.status}})
        except Exception:  # a bug, not the client's fault: logged, and only this file fails
            log.exception("unexpected error decoding a batch file")
            message = "internal server error; the server log has the details"
            slots.append({"file": name, "error": {"code": "internal_error", "message": message, "status": 500}})
    predictions = iter(s.predict(decoded))
    return [slot if slot is not None else next(predictions) for slot in slots]
