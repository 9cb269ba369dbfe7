"""`lungct explain`: parse, call lungct.explain, print (the command is registered in lungct.cli)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import HuOffset, Quiet, setup_logging
from lungct.contracts import CamMethod
from lungct.errors import LungCTError


class Group(StrEnum):
    frozen = "frozen"
    finetuned = "finetuned"
    all = "all"


def explain_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for <name>.npy heatmaps and <name>.png overlays")],
    paths: Annotated[list[Path] | None, typer.Argument(help="image files or folders")] = None,
    method: Annotated[CamMethod, typer.Option("--method", help="CAM method")] = CamMethod.gradcam,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="layer name (model.named_modules()); repeat to average")
    ] = None,
    layers: Annotated[
        Group | None, typer.Option("--layers", help="average a layer group instead of the default layer")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="class to explain (default: predicted)")] = None,
    from_split: Annotated[
        str | None, typer.Option("--from-split", help="also explain held-out slices of this split part, e.g. test")
    ] = None,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="slices per class with --from-split")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 8,
    hu_offset: HuOffset = None,
    quiet: Quiet = False,
) -> None:
    """Heatmaps (Grad-CAM, Grad-CAM++, EigenCAM, Score-CAM) and overlay PNGs for image files or folders."""
    from lungct.data.images import shown_path
    from lungct.explain.batch import explain_to_folder, held_out_paths
    from lungct.explain.explainer import Explainer
    from lungct.inference import expand_paths

    setup_logging(quiet)
    files = expand_paths(paths or [])
    if from_split:
        files += held_out_paths(run, from_split, per_class)
    if not files:
        raise LungCTError("nothing to explain: give image paths or --from-split PART")
    explainer = Explainer(run, batch_size=batch_size, hu_offset=hu_offset)
    result = explain_to_folder(
        explainer, files, out, method.value, layer, layers.value if layers else None, target, progress=not quiet
    )
    typer.echo(f"{len(result.written)} heatmaps and overlays written to {out}")
    if result.errors:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise LungCTError(f"could not read {shown_path(first.path)}: {first.reason}{more}")
