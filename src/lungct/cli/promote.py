"""`lungct promote`: move the registry's champion alias to a gated challenger, or back (docs/feedback.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import TrackingUri
from lungct.errors import LungCTError


def promote_command(
    run: Annotated[Path | None, typer.Option("--run", help="the challenger run (from lungct retrain)")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="move champion back to the previous version")] = False,
    tracking_uri: TrackingUri = None,
    model: Annotated[str, typer.Option("--model", help="registered model name")] = "lungct",
) -> None:
    """Register RUN as the `challenger` and make it `champion` if its promotion.json passed; or --rollback."""
    from lungct.run import RunDir
    from lungct.tracking.registry import Registry

    if (run is None) == (not rollback):
        raise LungCTError("give --run RUN to promote, or --rollback (not both)")
    if run is not None:
        RunDir(run).card()  # before the registry: a wrong --run or a damaged model.json creates no store
    registry = Registry(tracking_uri, model, create=not rollback)  # a rollback needs a registry that exists
    result = registry.rollback() if rollback else registry.promote(run)
    typer.echo(json.dumps({**result, "registry": registry.status()}))
    if not rollback and not result["promoted"] and result.get("challenger"):
        raise typer.Exit(3)  # a refusal is an answer, not an error; scripts can tell it apart
