"""`lungct app`: check the run, then start `streamlit run` on the packaged page (registered in lungct.cli)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lungct.errors import LungCTError

PAGE = Path(__file__).with_name("page.py")
MAX_UPLOAD_MB = 50  # Streamlit refuses larger uploads itself; lungct.app.analysis checks the same limit


def streamlit_argv(
    run: Path, log: Path, port: int = 8501, address: str = "127.0.0.1", eval_dir: Path | None = None
) -> list[str]:
    """The `streamlit run` command line; everything after `--` is read by the page itself."""
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        "--server.fileWatcherType",
        "none",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--run",
        str(run),
        "--log",
        str(log),
    ]
    if eval_dir is not None:
        argv += ["--eval", str(eval_dir)]
    return argv


def check_run(run: Path, log: Path) -> None:
    """Fail at startup, as one line, for a missing or unfinished run or a log that cannot be written."""
    from lungct.monitoring.predlog import PredictionLog
    from lungct.run import RunDir

    if not run.exists():
        raise LungCTError(f"run directory not found: {run}")
    if not run.is_dir():
        raise LungCTError(f"not a run directory: {run}")
    RunDir(run).require_model()
    PredictionLog(log).close()


def app_command(
    run: Annotated[Path, typer.Option("--run", help="run directory (from lungct train)")],
    log: Annotated[
        Path | None, typer.Option("--log", help="prediction log (SQLite); default RUN/predictions.sqlite")
    ] = None,
    eval_dir: Annotated[
        Path | None, typer.Option("--eval", help="folder with metrics.json and plots; default RUN/eval")
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="port to serve on")] = 8501,
    address: Annotated[
        str, typer.Option("--address", help="address to listen on (0.0.0.0 for other machines)")
    ] = "127.0.0.1",
) -> None:
    """Start the web app: upload CT slices, see prediction, probabilities, Grad-CAM and the model's metrics."""
    log = log or run / "predictions.sqlite"
    check_run(run, log)
    typer.echo(f"lungct app: http://{address}:{port}  (run {run}, prediction log {log}; Ctrl-C stops it)")
    sys.stdout.flush()
    # Become streamlit (exec, not a child process): Ctrl-C and `kill` reach the server itself, nothing is orphaned.
    os.execv(sys.executable, streamlit_argv(run.resolve(), log.resolve(), port, address, eval_dir))
