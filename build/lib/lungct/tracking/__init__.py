"""Experiment tracking with MLflow: every train, evaluate, cv and tune run, failure-proof and optional.

Store: --tracking-uri, else MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlruns/mlflow.db` with artifacts in
`mlruns/artifacts`. Off with --no-track or LUNGCT_TRACKING=off. See docs/pipeline.md.
"""

from lungct.tracking.runs import log_cv, log_evaluation, log_history, log_training_run, run_config
from lungct.tracking.tracker import (
    Tracker,
    default_tracking_uri,
    resolve_tracking_uri,
    tracked_run,
    tracking_enabled,
)

__all__ = [
    "Tracker",
    "default_tracking_uri",
    "log_cv",
    "log_evaluation",
    "log_history",
    "log_training_run",
    "resolve_tracking_uri",
    "run_config",
    "tracked_run",
    "tracking_enabled",
]
