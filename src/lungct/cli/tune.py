"""`lungct tune`: parse, call lungct.tuning.study.tune inside an MLflow run, print the outcome."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import NoTrack, Quiet, TrackingUri, setup_logging
from lungct.files import output_folder


class Sampler(StrEnum):
    tpe = "tpe"
    random = "random"
    grid = "grid"


class Metric(StrEnum):
    val_balanced_accuracy = "val_balanced_accuracy"
    val_accuracy = "val_accuracy"
    val_loss = "val_loss"


class Keep(StrEnum):
    all = "all"
    best = "best"


def tune_command(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False, help="base experiment YAML")],
    trials: Annotated[int, typer.Option("--trials", help="finished trials the study should have in all")],
    sampler: Annotated[Sampler, typer.Option("--sampler", help="tpe, random, or grid (a fixed 8-point grid)")] = (
        Sampler.tpe
    ),
    study_dir: Annotated[
        Path | None, typer.Option("--study-dir", help="study folder (default runs/tune/<config name>)")
    ] = None,
    metric: Annotated[Metric, typer.Option("--metric", help="validation metric to optimise")] = (
        Metric.val_balanced_accuracy
    ),
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="stop poor trials early (MedianPruner)")] = True,
    keep: Annotated[Keep, typer.Option("--keep", help="keep every trial's run directory, or the best only")] = (
        Keep.all
    ),
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Search training settings with Optuna on one fixed group split's validation part; resumable."""
    from lungct.config import load_config
    from lungct.data.sources import check_sources
    from lungct.tracking import tracked_run
    from lungct.tuning.settings import TuneSettings
    from lungct.tuning.study import tune

    setup_logging(quiet)
    cfg = load_config(config)
    check_sources(cfg.data)
    settings = TuneSettings(
        trials=trials,
        study_dir=study_dir or Path("runs") / "tune" / cfg.name,
        sampler=sampler.value,
        metric=metric.value,
        prune=prune,
        keep=keep.value,
        progress=not quiet,
        track=not no_track,
    )
    params = {"tune.trials": trials, "tune.sampler": sampler.value, "tune.metric": metric.value, "tune.prune": prune}
    output_folder(settings.study_dir, "--study-dir")  # before tracking
    name = f"tune-{settings.study_dir.resolve().name}"
    with tracked_run("tune", name, params, cfg, tracking_uri, enabled=not no_track) as tracker:
        result = tune(cfg, settings)
        if result["best_value"] is not None:
            tracker.log_metrics({f"best_{metric.value}": result["best_value"], "best_trial": result["best_trial"]})
        for name in ("results.csv", "results.md", "tune.json", "best_config.yaml", *result["plots"]):
            tracker.log_artifact(settings.study_dir / name, "tune")
    typer.echo(
        f"{result['n_complete']} completed, {result['n_pruned']} pruned, {result['n_failed']} failed trials "
        f"({result['seconds_this_session']:.0f} s this session)"
    )
    if result["best_trial"] is not None:
        best = f"trial {result['best_trial']} {metric.value}={result['best_value']:.4f}"
        typer.echo(f"best: {best} {result['best_params']}")
        typer.echo(f"best config written to {result['best_config']}")
    typer.echo(f"results written to {settings.study_dir}/results.md")
