"""`lungct drift`: parse, call lungct.monitoring.drift_report.drift_report, print the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import Quiet, setup_logging
from lungct.errors import LungCTError

EXIT_RETRAIN = 3  # with --fail-on-drift, for cron jobs and CI


def drift_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory of the served model")],
    log: Annotated[Path, typer.Option("--log", help="prediction log (SQLite) written by the API or the app")],
    out: Annotated[Path, typer.Option("--out", help="folder for drift.json and drift.md")] = Path("drift-report"),
    since: Annotated[str | None, typer.Option("--since", help="only rows from this ISO time on (UTC)")] = None,
    last: Annotated[int | None, typer.Option("--last", help="only the newest N rows")] = None,
    min_rows: Annotated[int, typer.Option("--min-rows", help="fewer rows: 'not enough data'")] = 30,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="use rows of every model version for embeddings and predictions")
    ] = False,
    refresh_reference: Annotated[
        bool, typer.Option("--refresh-reference", help="recompute RUN/drift_reference.npz")
    ] = False,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help=f"exit with code {EXIT_RETRAIN} when retraining is due")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Has the served model's data drifted? Recent inputs, embeddings, confidence, class mix vs the run (PSI, KS)."""
    from lungct.monitoring.drift import DriftSettings
    from lungct.monitoring.drift_report import drift_report

    setup_logging(quiet)
    if min_rows < 2:
        raise LungCTError(f"--min-rows must be at least 2, got {min_rows}")
    if last is not None and last < 1:
        raise LungCTError(f"--last must be at least 1, got {last}")
    report = drift_report(
        run, log, out, since, last, DriftSettings(min_rows=min_rows), all_versions, refresh_reference, not quiet
    )
    for name, check in report["checks"].items():
        typer.echo(f"{name:10s} {check['status']:16s} ({check['n_current']} recent rows)")
    typer.echo(f"verdict: {report['verdict']}")
    typer.echo(f"report written to {out}/drift.md")
    if fail_on_drift and report["retraining_due"]:
        raise typer.Exit(EXIT_RETRAIN)
