"""`lungct train`, `evaluate`, `predict` and `backbones`: parse, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import ConfigFile, ExistingPaths, NoTrack, Quiet, SplitMode, TrackingUri, log, setup_logging


def train_command(
    out: Annotated[Path, typer.Option("--out", help="run directory to create (or resume)")],
    config: ConfigFile = None,
    data: Annotated[
        list[Path] | None, typer.Option("--data", exists=True, help="dataset root or CSV manifest; repeat to merge")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="weights file, 'hub', or 'none' for random init")
    ] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="backbone name (see `lungct backbones`)")] = None,
    split: Annotated[SplitMode | None, typer.Option("--split", help="split mode")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --out")] = False,
    params: Annotated[
        Path | None, typer.Option("--params", exists=True, dir_okay=False, help="params.yaml laid over the config")
    ] = None,
    split_file: Annotated[
        Path | None, typer.Option("--split-file", exists=True, dir_okay=False, help="use this split.csv")
    ] = None,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Train a classifier (two-phase fine-tuning) and write a run directory."""
    from lungct.config import SourceConfig
    from lungct.models.registry import get_spec
    from lungct.pipeline.params import load_config_with_params
    from lungct.pipeline.split import train_with_split
    from lungct.tracking import log_training_run, tracked_run
    from lungct.training import train as run_training

    setup_logging(quiet)
    cfg = load_config_with_params(config, params)
    if data:
        aliases = {k: v for s in cfg.data.sources for k, v in s.aliases.items()}
        cfg.data.sources = [SourceConfig(path=str(d.resolve()), aliases=aliases) for d in data]
    if arch:
        get_spec(arch)
        if arch != cfg.model.arch and weights is None and cfg.model.weights not in (None, "hub"):
            log.warning(
                "--arch %s: the config's weights file is for %s, so %s starts from random weights (pass --weights)",
                arch,
                cfg.model.arch,
                arch,
            )
            cfg.model.weights = None
        cfg.model.arch = arch
    if weights is not None:
        cfg.model.weights = (
            None
            if weights.lower() == "none"
            else ("hub" if weights == "hub" else str(Path(weights).expanduser().resolve()))
        )
    if split:
        cfg.split.mode = split.value
    if seed is not None:
        cfg.seed = seed
    with tracked_run("train", out.resolve().name, config=cfg, tracking_uri=tracking_uri, enabled=not no_track) as t:
        kwargs = {"progress": not quiet, "overwrite": overwrite, "callbacks": [t.epoch_callback()]}
        run = train_with_split(cfg, out, split_file, **kwargs) if split_file else run_training(cfg, out, **kwargs)
        log_training_run(t, run.path, cfg.train.early_stopping.monitor)
    typer.echo(f"run written to {run.path}")


def evaluate_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json and plots")],
    data: Annotated[
        list[Path] | None, typer.Option("--data", exists=True, help="labelled data instead of the run's test part")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="average each slice with its mirror image")] = False,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Evaluate a run on its test part (or on --data) and write metrics.json, plots and a report."""
    from lungct.evaluation.evaluate import evaluate as run_evaluation
    from lungct.tracking import log_evaluation, run_config, tracked_run

    setup_logging(quiet)
    name = f"{run.resolve().name}-eval"
    with tracked_run("evaluate", name, config=run_config(run), tracking_uri=tracking_uri, enabled=not no_track) as t:
        m = run_evaluation(run, out, [str(d) for d in data] if data else None, progress=not quiet, tta=tta)
        log_evaluation(t, out, m, run_dir=run)
    typer.echo(
        f"n={m['n']} accuracy={m['accuracy']:.3f} balanced_accuracy={m['balanced_accuracy']:.3f} "
        f"macro_f1={m['macro_f1']:.3f} macro_auc={m['macro_auc'] or float('nan'):.3f} ece={m['ece']:.3f}"
    )
    typer.echo(f"report written to {out}/metrics.json")


def predict_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    paths: ExistingPaths,
    tta: Annotated[bool, typer.Option("--tta", help="average each slice with its mirror image")] = False,
) -> None:
    """Predict image files or folders; one JSON line per file on stdout.

    DICOM slices are named by file name only: folder names of DICOM exports often carry the patient's name.
    """
    from lungct.data.images import is_dicom_file
    from lungct.inference import Predictor, unfinished_run

    setup_logging(True)
    predictor = Predictor(run, tta=tta)
    if (reason := unfinished_run(run)) is not None:
        typer.echo(f"lungct: warning: {reason}", err=True)
    for result in predictor.predict(paths):
        if is_dicom_file(result["path"]):
            result = {"file": Path(result.pop("path")).name, **result}
        typer.echo(json.dumps(result))


def backbones_command() -> None:
    """List the registered backbones."""
    from lungct.models.registry import BACKBONES

    for name, spec in sorted(BACKBONES.items()):
        typer.echo(f"{name:24s} {spec.description}")
