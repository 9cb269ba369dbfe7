"""`lungct ensemble`: parse, call lungct.ensemble, print (the command is registered in lungct.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import setup_logging


def ensemble_command(
    cv: Annotated[Path, typer.Option("--cv", help="a finished `lungct cv` folder")],
    out: Annotated[Path, typer.Option("--out", help="run directory to create")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace what is in --out")] = False,
) -> None:
    """The fold models of a cv folder as one run (mean probability), usable by every command."""
    from lungct.ensemble.build import build_ensemble

    setup_logging(True)
    run = build_ensemble(cv, out, overwrite)
    summary = run.read_summary()
    counts, ensemble = summary.counts, (summary.model_extra or {}).get("ensemble", {})
    typer.echo(
        f"wrote {run.path}: {ensemble.get('members')} members "
        f"(shared backbone: {ensemble.get('shared_backbone')}); split {counts}"
    )
