"""The command line: a thin shell that parses arguments, calls lungct's functions and prints.

Every problem a user can fix ends as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.errors import LungCTError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Lung CT classification: train, evaluate, predict.",
)
log = logging.getLogger("lungct")

ExistingPaths = Annotated[list[Path], typer.Argument(exists=True, help="image files or folders")]


class SplitMode(StrEnum):
    group = "group"
    random = "random"


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or info messages")]


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING if quiet else logging.INFO)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="run directory to create (or resume)")],
    config: Annotated[
        Path | None, typer.Option("--config", exists=True, dir_okay=False, help="experiment YAML")
    ] = None,
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
    quiet: Quiet = False,
) -> None:
    """Train a classifier (two-phase fine-tuning) and write a run directory."""
    from lungct.config import SourceConfig, load_config
    from lungct.models.registry import get_spec
    from lungct.training import train as run_training

    _setup_logging(quiet)
    cfg = load_config(config)
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
    run = run_training(cfg, out, progress=not quiet, overwrite=overwrite)
    typer.echo(f"run written to {run.path}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json and plots")],
    data: Annotated[
        list[Path] | None, typer.Option("--data", exists=True, help="labelled data instead of the run's test part")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a run on its test part (or on --data) and write metrics.json, plots and a report."""
    from lungct.evaluation.evaluate import evaluate as run_evaluation

    _setup_logging(quiet)
    m = run_evaluation(run, out, [str(d) for d in data] if data else None, progress=not quiet)
    typer.echo(
        f"n={m['n']} accuracy={m['accuracy']:.3f} balanced_accuracy={m['balanced_accuracy']:.3f} "
        f"macro_f1={m['macro_f1']:.3f} macro_auc={m['macro_auc'] or float('nan'):.3f} ece={m['ece']:.3f}"
    )
    typer.echo(f"report written to {out}/metrics.json")


@app.command()
def predict(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    paths: ExistingPaths,
) -> None:
    """Predict image files or folders; one JSON line per file on stdout."""
    from lungct.inference import Predictor

    _setup_logging(True)
    predictor = Predictor(run)
    for result in predictor.predict(paths):
        typer.echo(json.dumps(result))


@app.command()
def backbones() -> None:
    """List the registered backbones."""
    from lungct.models.registry import BACKBONES

    for name, spec in sorted(BACKBONES.items()):
        typer.echo(f"{name:24s} {spec.description}")


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: unknown option, missing path, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(str(exc))
            return 0
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"lungct: error: {' '.join(message.split())}", err=True)
        return getattr(exc, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("lungct: interrupted; run the same command again to resume", err=True)
        return 130
    except LungCTError as exc:
        typer.echo(f"lungct: error: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


# Commands of other concerns register below, one import and one app.command line each.
from lungct.evaluation.commands import cv_command  # noqa: E402

app.command("cv")(cv_command)
from lungct.audit.command import audit_command  # noqa: E402

app.command("audit")(audit_command)
from lungct.dicom.cli import predict_series_command  # noqa: E402

app.command("predict-series")(predict_series_command)
from lungct.explain.commands import explain_command  # noqa: E402

app.command("explain")(explain_command)
from lungct.evaluation.commands import calibrate_command  # noqa: E402

app.command("calibrate")(calibrate_command)
from lungct.evaluation.commands import threshold_command  # noqa: E402

app.command("threshold")(threshold_command)
