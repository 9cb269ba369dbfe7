"""The REST API: FastAPI routes over lungct.serve.service, with uploads read by lungct.serve.uploads.

    GET  /health             liveness and the model version
    GET  /v1/model           classes, backbone, input size, version, backend, calibration, test metrics
    POST /v1/predict         one image (multipart field `file`) -> label, calibrated probabilities, latency
    POST /v1/predict/batch   many images and/or zip archives (fields `files` or `file`) -> one result per file
    POST /v1/explain         one image -> Grad-CAM overlay PNG (or JSON with the PNG in base64)

Model work runs in worker threads behind an anyio CapacityLimiter (settings.workers), so requests are
served concurrently and the event loop only moves bytes.
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
from lungct.serve.service import ModelService
from lungct.serve.settings import ServeSettings
from lungct.serve.uploads import Upload, read_uploads

log = logging.getLogger("lungct.serve")

ERRORS = {
    status: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, text in {
        400: "empty file, malformed multipart body, unsafe or broken zip",
        413: "file, request, image or archive over a limit; too many files",
        415: "not multipart/form-data, or a part whose content type is not an image",
        422: "unreadable image or invalid parameter",
        500: "unexpected server error (details only in the server log)",
        503: "no model loaded",
    }.items()
}


def _multipart_body(field: str, many: bool) -> dict:
    item = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": item} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: schema}, "required": [field]}
                }
            },
        }
    }


PREDICTION = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "description": "the upload's file name (last path component only)"},
        "label": {"type": "string"},
        "confidence": {"type": "number", "description": "calibrated probability of label"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "sha256": {"type": "string", "description": "of the uploaded bytes; the prediction log's key"},
        "latency_ms": {"type": "number"},
        "model_version": {"type": "string"},
        "backend": {"type": "string", "enum": ["onnx", "torch"]},
    },
}
FILE_RESULT = {
    "oneOf": [
        PREDICTION,
        {
            "type": "object",
            "properties": {"file": {"type": "string"}, "error": ERROR_SCHEMA["properties"]["error"]},
        },
    ]
}
BATCH = {
    "type": "object",
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


def _json_response(schema: dict, description: str) -> dict:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}, **ERRORS}


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The API for `settings.run`; with no settings, a model-less app (for the OpenAPI schema) that answers 503.

    The run is loaded here, so a missing or broken run fails at startup with a LungCTError.
    """
    service = ModelService(settings) if settings is not None else None
    limiter: dict[str, anyio.CapacityLimiter] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limiter["model"] = anyio.CapacityLimiter(settings.workers if settings else 1)
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

    def need() -> ModelService:
        if service is None:
            raise ApiError(503, "no_model", "no model is loaded")
        return service

    async def in_worker(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter.get("model"))

    @app.get("/health", responses=_json_response({"type": "object"}, "the service is up"))
    async def health() -> JSONResponse:
        s = need()
        return JSONResponse({"status": "ok", "model_version": s.version, "backend": s.predictor.backend})

    @app.get("/v1/model", responses=_json_response({"type": "object"}, "what answers predictions"))
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
                    "explain_max_side": s.settings.explain_max_side,
                },
            }
        )

    @app.post(
        "/v1/predict",
        responses=_json_response(PREDICTION, "the prediction"),
        openapi_extra=_multipart_body("file", False),
    )
    async def predict(request: Request) -> JSONResponse:
        s = need()
        upload = await _single_upload(request, s)
        start = time.perf_counter()
        result = await in_worker(lambda: s.predict([s.decode(upload.name, upload.data, upload.content_type)])[0])
        result["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return JSONResponse({**result, "model_version": s.version, "backend": s.predictor.backend})

    @app.post(
        "/v1/predict/batch",
        responses=_json_response(BATCH, "one result per file; a file that fails has `error` instead of a label"),
        openapi_extra=_multipart_body("files", True),
    )
    async def predict_batch(request: Request) -> JSONResponse:
        s = need()
        cfg = s.settings
        uploads = await read_uploads(request, cfg.max_file_bytes, cfg.max_batch_bytes, cfg.max_batch_files)
        uploads = [u for u in uploads if u.field in ("files", "file")]
        if not uploads:
            raise ApiError(400, "missing_file", "no files: send images or zip archives in multipart field 'files'")
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
                "description": "Grad-CAM overlay (image/png; X-Lungct-* headers carry the result) or JSON",
                "content": {"image/png": {}, "application/json": {"schema": {"type": "object"}}},
            },
            **ERRORS,
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
        explanation, png = await in_worker(s.explain, upload.name, upload.data, upload.content_type, method, target)
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


async def _single_upload(request: Request, s: ModelService) -> Upload:
    cfg = s.settings
    uploads = await read_uploads(request, cfg.max_file_bytes, cfg.max_file_bytes, 1)
    files = [u for u in uploads if u.field == "file"]
    if not files:
        raise ApiError(400, "missing_file", "no file: send the image in multipart field 'file'")
    return files[0]


def _run_batch(s: ModelService, uploads: list[Upload]) -> list[dict]:
    """Decode every file (zip members included), predict the readable ones; one entry per file, in order."""
    cfg = s.settings
    entries: list[tuple[str, bytes, str]] = []
    for up in uploads:
        if up.data and is_zip(up.data, up.name, up.content_type):
            budget = cfg.max_batch_bytes - sum(len(e[1]) for e in entries)  # all archives together stay bounded
            limits = ZipLimits(cfg.max_batch_files - len(entries), cfg.max_file_bytes, budget, cfg.max_zip_ratio)
            entries += [(name, blob, "") for name, blob in zip_members(up.data, up.name, limits)]
        else:
            entries.append((up.name, up.data, up.content_type))
        if len(entries) > cfg.max_batch_files:
            raise ApiError(413, "too_many_files", f"too many files: at most {cfg.max_batch_files} per request")
    slots: list[dict | None] = []
    decoded = []
    for name, data, ctype in entries:
        try:
            decoded.append(s.decode(name, data, ctype))
            slots.append(None)
        except ApiError as exc:
            slots.append({"file": name, "error": {"code": exc.code, "message": exc.message, "status": exc.status}})
        except Exception:  # a bug, not the client's fault: logged, and only this file fails
            log.exception("unexpected error decoding a batch file")
            message = "internal server error; the server log has the details"
            slots.append({"file": name, "error": {"code": "internal_error", "message": message, "status": 500}})
    predictions = iter(s.predict(decoded))
    return [slot if slot is not None else next(predictions) for slot in slots]
