"""`lungct serve`: settings from options (over LUNGCT_SERVE_* variables), then uvicorn (registered in lungct.cli)."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import HuOffset, TrackingUri, setup_logging
from lungct.cli.ports import listen_socket
from lungct.contracts import Backend
from lungct.errors import LungCTError


class Precision(StrEnum):  # lungct.inference.onnx_runtime.PRECISIONS
    auto = "auto"
    float = "float"
    int8 = "int8"


def serve_command(
    run: Annotated[Path | None, typer.Option("--run", help="run directory (from lungct train)")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="port (default 8000; 0 picks a free one)")
    ] = None,
    backend: Annotated[Backend | None, typer.Option("--backend", help="ONNX Runtime, PyTorch, or auto")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="average with the mirrored slice")] = None,
    hu_offset: HuOffset = None,
    precision: Annotated[
        Precision | None, typer.Option("--precision", help="auto: the run's checked INT8 graph when there is one")
    ] = None,
    int8_max_drop: Annotated[
        float | None, typer.Option("--int8-max-drop", help="refuse INT8 past this balanced-accuracy drop (0.01)")
    ] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="share model calls between requests (on)")
    ] = None,
    batch_max_size: Annotated[int | None, typer.Option("--batch-max-size", help="requests per batch (16)")] = None,
    batch_wait_ms: Annotated[
        float | None, typer.Option("--batch-wait-ms", help="longest wait for a batch to fill (2 ms)")
    ] = None,
    model_batch_size: Annotated[
        int | None, typer.Option("--model-batch-size", help="most slices per model call (4)")
    ] = None,
    max_file_mb: Annotated[float | None, typer.Option("--max-file-mb", help="largest upload (default 20)")] = None,
    max_batch_files: Annotated[int | None, typer.Option("--max-batch-files", help="default 200")] = None,
    max_batch_mb: Annotated[float | None, typer.Option("--max-batch-mb", help="default 200")] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="default 16777216 (4096 x 4096)")] = None,
    max_request_pixels: Annotated[
        int | None, typer.Option("--max-request-pixels", help="decoded pixels per request (default 128000000)")
    ] = None,
    max_zip_ratio: Annotated[
        float | None, typer.Option("--max-zip-ratio", help="highest zip compression ratio (default 100)")
    ] = None,
    explain_max_side: Annotated[
        int | None, typer.Option("--explain-max-side", help="largest side of an explain overlay PNG (default 1024)")
    ] = None,
    explain_concurrency: Annotated[
        int | None, typer.Option("--explain-concurrency", help="explanations at once (default 1)")
    ] = None,
    explain_queue: Annotated[
        int | None, typer.Option("--explain-queue", help="explanations waiting; past it 503 (default 4)")
    ] = None,
    explain_timeout_s: Annotated[
        float | None, typer.Option("--explain-timeout-s", help="time limit per explanation; past it 504 (default 300)")
    ] = None,
    shutdown_timeout_s: Annotated[
        float | None, typer.Option("--shutdown-timeout-s", help="grace for open requests on shutdown (default 5)")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="model calls at once (default 2)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="threads per model call")] = None,
    log: Annotated[Path | None, typer.Option("--log", help="prediction log; default RUN/predictions.sqlite")] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="do not log predictions")] = False,
    keep_uploads: Annotated[
        Path | None, typer.Option("--keep-uploads", help="save accepted uploads in this folder (off by default)")
    ] = None,
    keep_feedback_images: Annotated[
        Path | None,
        typer.Option(
            "--keep-feedback-images", help="keep predicted slices (de-identified PNG) so feedback can retrain (off)"
        ),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", help="serve and follow a registry alias, e.g. models:/lungct@champion"),
    ] = None,
    tracking_uri: TrackingUri = None,
    reload_interval_s: Annotated[
        float | None, typer.Option("--reload-interval-s", help="how often --model-uri's alias is checked (10)")
    ] = None,
    openapi_out: Annotated[
        Path | None, typer.Option("--openapi-out", help="write the OpenAPI schema to this file and exit")
    ] = None,
) -> None:
    """Serve a run over HTTP: /health, /v1/model, /v1/predict, /v1/predict/batch, /v1/explain (see docs/serve.md)."""
    from pydantic import ValidationError

    from lungct.serve.openapi import write_openapi

    if openapi_out is not None:
        typer.echo(f"wrote {write_openapi(openapi_out)}")
        return
    from lungct.serve.settings import ServeSettings

    # Only what was given goes in: an option's default passed on would hide the LUNGCT_SERVE_* variable of the same
    # setting (the port, host, run and prediction log of a deployment's environment were ignored before).
    options = {
        "run": run,
        "model_uri": model_uri,
        "host": host,
        "port": port,
        "log_predictions": False if no_log else None,
        "backend": backend.value if backend else None,
        "tta": tta,
        "hu_offset": hu_offset,
        "precision": precision.value if precision else None,
        "int8_max_drop": int8_max_drop,
        "batching": batching,
        "batch_max_size": batch_max_size,
        "batch_wait_ms": batch_wait_ms,
        "model_batch_size": model_batch_size,
        "max_file_mb": max_file_mb,
        "max_batch_files": max_batch_files,
        "max_batch_mb": max_batch_mb,
        "max_pixels": max_pixels,
        "max_request_pixels": max_request_pixels,
        "max_zip_ratio": max_zip_ratio,
        "explain_max_side": explain_max_side,
        "explain_concurrency": explain_concurrency,
        "explain_queue": explain_queue,
        "explain_timeout_s": explain_timeout_s,
        "shutdown_timeout_s": shutdown_timeout_s,
        "workers": workers,
        "threads": threads,
        "log_path": log,
        "keep_uploads": keep_uploads,
        "keep_feedback_images": keep_feedback_images,
        "tracking_uri": tracking_uri,
        "reload_interval_s": reload_interval_s,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise LungCTError(f"invalid serve settings: {problems}") from None
    serve(settings)


def _problem(error: dict) -> str:
    """One validation error as `field: message`; a rule over several fields (run or model_uri) has no field."""
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {message}" if where else message


def serve(settings) -> None:
    """Load the run, then run uvicorn until interrupted; torch threads follow settings.model_threads."""
    import uvicorn

    from lungct.inference import unfinished_run
    from lungct.serve.app import create_app

    setup_logging(quiet=False, server=True)
    listening = listen_socket(settings.host, settings.port)  # a port in use fails now, not after loading the model
    port = listening.getsockname()[1]  # the real one when --port 0 picked a free port
    try:
        app = create_app(settings)
    except BaseException:
        listening.close()
        raise
    if "torch" in sys.modules:  # loaded only when PyTorch answers (or for explanations); never just for this
        sys.modules["torch"].set_num_threads(settings.model_threads)  # per call; `workers` calls share the cores
    service = app.state.service
    logging.getLogger("lungct.serve").info(
        "serving %s (%s, %s) on http://%s:%d with %d workers x %d threads; prediction log: %s",
        service.version,
        service.predictor.precision,
        service.predictor.backend_reason,
        settings.host,
        port,
        settings.workers,
        settings.model_threads,
        settings.resolved_log_path or "off",
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("lungct.serve").warning("listening beyond loopback: the API has no authentication")
    served = app.state.service.run  # the run folder, or the downloaded version of --model-uri
    if (reason := unfinished_run(served)) is not None:
        logging.getLogger("lungct.serve").warning("%s", reason)
    uvicorn.Server(uvicorn_config(app, settings)).run(sockets=[listening])


def uvicorn_config(app, settings):
    """uvicorn's settings for `app`: on SIGTERM, open requests get settings.shutdown_timeout_s, then are cancelled
    (a running explanation's daemon thread is abandoned, never waited for)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
