"""What a train, evaluate or cv run hands to MLflow: its run directory, history and metrics.json.

The run directory's files go under the artifact folder `run/`, so `mlflow artifacts download -a run` gives back
a run directory that `lungct predict --run` and `lungct evaluate --run` accept.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lungct.tracking.flatten import report_metrics
from lungct.tracking.tracker import Tracker

if TYPE_CHECKING:
    from lungct.config import ExperimentConfig

RUN_FILES = (
    "config.yaml",
    "model.json",
    "model.safetensors",
    "calibration.json",
    "split.csv",
    "history.csv",
    "curves.png",
    "summary.json",
)
BEST_KEYS = ("val_loss", "val_accuracy", "val_balanced_accuracy", "train_loss", "train_accuracy")


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(value: str) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def log_history(tracker: Tracker, history: list[dict]) -> None:
    """Per-epoch metrics of the epochs the epoch callback did not log (all of them after a resume or for cv)."""
    for step, row in enumerate(history, start=1):
        if step not in tracker.logged_steps:
            tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
            tracker.logged_steps.add(step)


def best_epoch_metrics(history: list[dict], monitor: str) -> dict[str, float]:
    """`best_<metric>` at the epoch the early-stopping monitor liked best (whose weights the run keeps)."""
    rows = [r for r in history if isinstance(r.get(monitor), float)]
    if not rows:
        return {}
    pick = min if monitor.endswith("loss") else max
    best = pick(rows, key=lambda r: r[monitor])
    out = {f"best_{k}": best[k] for k in BEST_KEYS if isinstance(best.get(k), float)}
    out["best_step"] = float(rows.index(best) + 1)
    out["epochs_trained"] = float(len(history))
    return out


def _tag_run(tracker: Tracker, run_dir: str | Path) -> None:
    """`lungct.run_dir` and `lungct.model_version` (run name, arch, weights hash): the same on train and evaluate."""
    from lungct.errors import LungCTError
    from lungct.run import RunDir, model_version

    run = RunDir(run_dir)
    tags = {"lungct.run_dir": str(run.path.resolve())}
    with contextlib.suppress(LungCTError, OSError):
        tags["lungct.model_version"] = model_version(run)
    tracker.set_tags(tags)


def log_training_run(tracker: Tracker, run_dir: str | Path, monitor: str = "val_loss") -> None:
    """History, best-epoch metrics, counts and the run directory's files (model included) of a finished run."""
    if not tracker.active:
        return
    from lungct.run import RunDir  # torch-heavy; lungct.tracking itself stays light

    run = RunDir(run_dir)
    history = read_history(run.history)
    log_history(tracker, history)
    summary = run.read_summary()
    metrics = best_epoch_metrics(history, monitor)
    if summary.train_seconds is not None:
        metrics["train_seconds"] = summary.train_seconds
    for part, counts in summary.counts.items():
        metrics[f"n_{part}"] = sum(counts.values())
    metrics["n_skipped"] = len(summary.skipped)
    tracker.log_metrics(metrics)
    _tag_run(tracker, run.path)
    for name in RUN_FILES:
        tracker.log_artifact(run.path / name, "run")


def run_config(run_dir: str | Path) -> ExperimentConfig | None:
    """The config a run was trained with (for an evaluate run's parameters), or None if it cannot be read."""
    from lungct.config import load_config
    from lungct.errors import LungCTError

    path = Path(run_dir) / "config.yaml"
    try:
        return load_config(path) if path.is_file() else None
    except LungCTError:
        return None


def log_evaluation(
    tracker: Tracker, out_dir: str | Path, metrics: dict | None = None, run_dir: str | Path | None = None
) -> None:
    """metrics.json (ci95 as `<metric>_ci95_low/high`) and the report folder (plots, predictions) as `eval/`.

    With `run_dir`, the evaluated run's folder and model version are tags, linking it to its training run.
    """
    if not tracker.active:
        return
    out = Path(out_dir)
    if run_dir is not None:
        _tag_run(tracker, run_dir)
    if metrics is None and (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    if metrics:
        tracker.log_metrics(report_metrics(metrics))
    tracker.log_artifacts(out, "eval")


def log_cv(tracker: Tracker, out_dir: str | Path, result: dict, monitor: str = "val_loss") -> None:
    """A cv run: `<metric>_mean/_std/_min/_max` over folds, the reports, and one nested run per fold.

    Fold runs are logged after cross-validation (from fold_k/ and fold_k/eval/), each with its history,
    test metrics and model, as children of the cv run.
    """
    from lungct.tracking.tracker import tracked_run

    if not tracker.active:
        return
    out = Path(out_dir)
    summary = {f"{m}_{stat}": v for m, stats in result.get("summary", {}).items() for stat, v in stats.items()}
    tracker.log_metrics({**summary, "n_images": result.get("n_images"), "n_groups": result.get("n_groups")})
    for name in ("cv.json", "cv.csv", "cv.md"):
        tracker.log_artifact(out / name, "cv")
    for row in result.get("per_fold", []):
        fold_dir = out / f"fold_{row['fold']}"
        with tracked_run("cv-fold", fold_dir.name, params={"fold": row["fold"]}, nested=True) as child:
            log_training_run(child, fold_dir, monitor)
            log_evaluation(child, fold_dir / "eval")
