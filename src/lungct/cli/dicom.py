"""`lungct predict-series`: one series (a DICOM folder or zip, or a folder of image slices) -> per-slice JSON lines
and a study JSON line."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import HuOffset
from lungct.contracts import DicomWindow


class AggregateChoice(StrEnum):
    max = "max"
    mean = "mean"
    topk = "topk"


def predict_series_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    path: Annotated[
        Path, typer.Argument(exists=True, help="a folder or zip holding one DICOM series, or a folder of image slices")
    ],
    aggregate: Annotated[AggregateChoice, typer.Option("--aggregate", help="study score from slices")] = (
        AggregateChoice.max
    ),
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="slices for topk (and named for mean)")] = 3,
    positive_class: Annotated[
        str | None, typer.Option("--positive-class", help="class scored per study (default: the run's)")
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="study score at or above which it is positive")
    ] = 0.5,
    window: Annotated[
        DicomWindow | None, typer.Option("--window", help="Hounsfield window (default: the model's)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="accept modalities other than CT")] = False,
    hu_offset: HuOffset = None,
) -> None:
    """Predict one series: per-slice JSON lines in slice order, then one study-level JSON line.

    A folder without DICOM files is a series of image files (one slice each, e.g. 16-bit PNG exports with
    --hu-offset) in natural file-name order.
    """
    from lungct.dicom.series import load_series
    from lungct.errors import LungCTError
    from lungct.inference import Predictor
    from lungct.inference.study import ImageSeries, image_series, predict_series

    series = image_series(path) or load_series(path, force=force)
    if hu_offset is not None and not isinstance(series, ImageSeries):
        raise LungCTError("--hu-offset is for image files; DICOM slices carry their own rescale to HU")
    result = predict_series(
        Predictor(run, hu_offset=hu_offset),
        series,
        aggregate.value,
        top_k,
        positive_class,
        threshold,
        window.value if window else None,
    )
    for line in result.slices:
        typer.echo(json.dumps(line))
    typer.echo(json.dumps(result.study))
