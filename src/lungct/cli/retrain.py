"""`lungct retrain`: a challenger from feedback, and whether it may replace the champion (docs/feedback.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import Quiet, setup_logging


def retrain_command(
    champion: Annotated[Path, typer.Option("--champion", help="the run in service")],
    feedback: Annotated[Path, typer.Option("--feedback", help="lungct feedback export's folder (or its manifest.csv)")],
    out: Annotated[Path, typer.Option("--out", help="run directory for the challenger")],
    margin: Annotated[
        float, typer.Option("--margin", max=0.0, help="non-inferiority margin of the paired interval (-0.01)")
    ] = -0.01,
    quiet: Quiet = False,
) -> None:
    """Train a challenger with the champion's config on its data plus the feedback; promote only if it is not
    worse on balanced accuracy and malignant recall (paired group bootstrap) and better on one. Writes
    OUT/promotion.json."""
    from lungct.retrain.challenger import retrain

    setup_logging(quiet)
    result = retrain(champion, feedback, out, margin, progress=not quiet)
    verdict = "PROMOTE" if result["promote"] else "REFUSED"
    versions = result["challenger"]["model_version"], result["champion"]["model_version"]
    typer.echo(f"{verdict}: challenger {versions[0]} against champion {versions[1]}")
    for reason in result["reasons"]:
        typer.echo(f"  {reason}")
    typer.echo(f"written: {out / 'promotion.json'}")
