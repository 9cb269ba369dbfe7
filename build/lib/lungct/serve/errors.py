"""The API's error shape, {"error": {"code", "message"}}, for every failure, including unexpected ones.

A client always gets JSON naming the problem; an unexpected exception becomes a 500 whose body says only
that (the traceback goes to the server log), so internals never leak and the server keeps serving.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lungct.inference.service import UploadError

log = logging.getLogger("lungct.serve")


class ApiError(UploadError):
    """A problem with the request that the client can fix (4xx), or the service's state (503), found by the
    HTTP layer itself (multipart, zip archives, the explain queue); the inference service raises UploadError,
    its parent, for the uploads it refuses. Both answer with the same JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, code, message, headers=headers)


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer of the API (the OpenAPI document's error schema)."""

    error: ErrorInfo


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def _api_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        # Starlette's 405 carries the Allow header that RFC 9110 requires: keep it (and any other).
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    app.add_middleware(CatchAll)


class CatchAll:
    """Turns an unexpected exception into the 500 JSON body, logged with its traceback server-side.

    A pure ASGI middleware rather than an exception handler for Exception: Starlette re-raises after such a
    handler, and the server then drops the keep-alive connection that the client is about to reuse.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer; let the server close the connection
                raise
            response = error_response(500, "internal_error", "internal server error; the server log has the details")
            await response(scope, receive, send)
