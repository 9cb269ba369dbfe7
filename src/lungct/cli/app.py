"""`lungct app`: check the run, then become `streamlit run` on the packaged page."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lungct.app.launch import check_run, streamlit_argv
from lungct.cli.options import HuOffset
from lungct.cli.ports import listen_socket


def app_command(
    run: Annotated[Path, typer.Option("--run", help="run directory (from lungct train)")],
    log: Annotated[
        Path | None, typer.Option("--log", help="prediction log (SQLite); default RUN/predictions.sqlite")
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            "--eval", exists=True, file_okay=False, help="folder with metrics.json and plots; default RUN/eval"
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="port to serve on")] = 8501,
    address: Annotated[
        str, typer.Option("--address", help="address to listen on (0.0.0.0 for other machines)")
    ] = "127.0.0.1",
    hu_offset: HuOffset = None,
) -> None:
    """Start the web app: upload CT slices, see prediction, probabilities, Grad-CAM and the model's metrics."""
    log = log or run / "predictions.sqlite"
    check_run(run, log)
    listen_socket(address, port).close()  # a port in use fails here, before the URL is announced
    typer.echo(f"lungct app: http://{address}:{port}  (run {run}, prediction log {log}; Ctrl-C stops it)")
    sys.stdout.flush()
    # Become streamlit (exec, not a child process): Ctrl-C and `kill` reach the server itself, nothing is orphaned.
    os.execv(sys.executable, streamlit_argv(run.resolve(), log.resolve(), port, address, eval_dir, hu_offset))
