"""`lungct feedback export`: clinicians' feedback from the prediction log to a training dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Clinicians' feedback on served predictions (docs/feedback.md).", no_args_is_help=True)


@app.command("export")
def export_command(
    log: Annotated[Path, typer.Option("--log", help="the server's prediction log (SQLite)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the dataset: <label>/<sha256>.png + manifest.csv")],
) -> None:
    """Write every prediction's latest feedback whose slice was kept (--keep-feedback-images) as a dataset."""
    from lungct.monitoring.feedback import export_feedback

    typer.echo(json.dumps(export_feedback(log, out)))
