"""`lungct split`: the pipeline's split stage (parse, call the API, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import ConfigFile, Quiet, setup_logging
from lungct.files import replaceable_output


def _split_header(head: bytes) -> bool:
    """An earlier split.csv: its first line names the columns path,label,group,part."""
    first = head.decode("utf-8-sig", errors="replace").splitlines()[0] if head.strip() else ""
    return {c.strip() for c in first.split(",")} >= {"path", "label", "group", "part"}


def split_command(
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="split.csv to write (path,label,group,part)")],
    config: ConfigFile = None,
    params: Annotated[
        Path | None, typer.Option("--params", exists=True, dir_okay=False, help="params.yaml laid over the config")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Split the config's data into train/val/test (by look-alike group) as training would; write split.csv."""
    from lungct.data.splits import part_counts
    from lungct.pipeline.params import load_config_with_params
    from lungct.pipeline.split import write_split

    setup_logging(quiet)
    replaceable_output(out, "--out", "a split file", _split_header, [p for p in (config, params) if p])
    items, skipped = write_split(load_config_with_params(config, params), out, progress=not quiet)
    for part, counts in part_counts(items).items():
        if not counts:
            continue
        typer.echo(f"{part}: {sum(counts.values())} images {dict(sorted(counts.items()))}")
    typer.echo(f"split written to {out} ({len(skipped)} files skipped)")
