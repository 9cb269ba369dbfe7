"""Options and logging setup every command shares; the one place they are defined."""

from __future__ import annotations

import logging
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("lungct")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or info messages")]
ExistingPaths = Annotated[list[Path], typer.Argument(exists=True, help="image files or folders")]
ConfigFile = Annotated[Path | None, typer.Option("--config", exists=True, dir_okay=False, help="experiment YAML")]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db)",
    ),
]
# The config's data.hu_offset, given for the files at hand (lungct.data.images): it describes them, not the model
HuOffset = Annotated[
    int | None,
    typer.Option(
        "--hu-offset",
        min=-65536,
        max=65536,
        help="the images are 16-bit/float CT storing HU + this offset (1024 is common): windowed like DICOM "
        "(default: the run's own; without one they are stretched)",
    ),
]
NoTrack = Annotated[bool, typer.Option("--no-track", help="do not log this run to MLflow (or LUNGCT_TRACKING=off)")]


class SplitMode(StrEnum):
    group = "group"
    random = "random"


def setup_logging(quiet: bool, server: bool = False) -> None:
    """Messages go to stderr without decoration; --quiet keeps only warnings and errors. A server's log lines
    name their level and logger, as uvicorn's own lines beside them do."""
    fmt = "%(levelname)s %(name)s: %(message)s" if server else "%(message)s"
    logging.basicConfig(format=fmt, stream=sys.stderr, level=logging.WARNING if quiet else logging.INFO)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def quiet_dicom_warnings() -> None:
    """pydicom warns and logs about a damaged file with its path or an offending value, either of which can name
    the patient; the command's own one-line error (or JSON line) for that file says what is wrong instead."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
    logging.getLogger("pydicom").addFilter(_errors_only)  # a filter: importing pydicom resets the logger's level


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def warn_if_unfinished(run: Path) -> None:
    """One warning line when `run` is still training or was interrupted: its weights are an intermediate
    checkpoint, and whatever a command derives from them (metrics, a calibration, an export) describes weights
    that resuming the training will replace."""
    from lungct.inference import unfinished_run

    if (reason := unfinished_run(run)) is not None:
        typer.echo(f"lungct: warning: {reason}", err=True)
