"""`lungct audit`: thin CLI wrapper around run_audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import HuOffset, Quiet, setup_logging


def audit_command(
    data: Annotated[list[Path], typer.Argument(exists=True, help="dataset folders or CSV manifests")],
    out: Annotated[Path, typer.Option("--out", help="folder for audit.json and audit.md")] = Path("audit"),
    split: Annotated[
        Path | None, typer.Option("--split", exists=True, help="split.csv (or a run directory) to check for leaks")
    ] = None,
    background: Annotated[
        bool,
        typer.Option("--background/--no-background", help="check whether the label shows outside the body"),
    ] = True,
    hu_offset: HuOffset = None,
    quiet: Quiet = False,
) -> None:
    """Audit a dataset: duplicates, look-alike groups, leaks in a split, shortcuts, class balance."""
    from lungct.audit.core import run_audit

    setup_logging(quiet)
    a = run_audit(data, out, split, progress=not quiet, background=background, hu_offset=hu_offset)
    d = a["duplicate_summary"]
    typer.echo(f"images: {a['counts']['total']} {a['counts']['per_class']} imbalance {a['counts']['imbalance_ratio']}")
    typer.echo(
        f"duplicates: {d['exact_groups']} exact groups ({d['exact_pairs']} pairs), {d['near_groups']} near groups, "
        f"{d['cross_class_groups']} across classes"
    )
    for s in a["shortcuts"]:
        typer.echo(f"shortcut: {s['property']}={s['value']} only in {s['classes'][0]} ({s['count']} images)")
    for s in a["source_differences"]:
        typer.echo(f"source difference: {s['detail']}")
    b = a["background"]
    if b["ran"] and b["flagged"]:
        typer.echo(
            f"shortcut: the label shows outside the body (balanced accuracy {b['balanced_accuracy']:.2f} from air, "
            f"table and border alone; chance {b['chance']:.2f})"
        )
    if a["split"] is not None:
        typer.echo(f"leaks: {len(a['leaks'])}")
    typer.echo(f"report written to {Path(out) / 'audit.md'}")
