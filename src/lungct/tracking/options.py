"""The CLI options every tracked command shares (--tracking-uri, --no-track)."""

from __future__ import annotations

from typing import Annotated

import typer

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db)",
    ),
]
NoTrack = Annotated[bool, typer.Option("--no-track", help="do not log this run to MLflow (or LUNGCT_TRACKING=off)")]
