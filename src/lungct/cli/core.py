"""`lungct train`, `evaluate`, `predict` and `backbones`: parse, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import (
    ConfigFile,
    ExistingPaths,
    HuOffset,
    NoTrack,
    Quiet,
    SplitMode,
    TrackingUri,
    log,
    setup_logging,
    warn_if_unfinished,
)
from lungct.errors import LungCTError
from lungct.files import output_folder, replaceable_output


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
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**32 - 1, help="random seed")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --out")] = False,
    params: Annotated[
        Path | None, typer.Option("--params", exists=True, dir_okay=False, help="params.yaml laid over the config")
    ] = None,
    split_file: Annotated[
        Path | None, typer.Option("--split-file", exists=True, dir_okay=False, help="use this split.csv")
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", min=1, help="train on N processes of this machine (torch.distributed.run; gloo on CPUs)"
        ),
    ] = 1,
    max_restarts: Annotated[
        int,
        typer.Option("--max-restarts", min=0, help="with --nproc: restart a failed worker group from its checkpoint"),
    ] = 0,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> int | None:
    """Train a classifier (two-phase fine-tuning) and write a run directory.

    Under torchrun (`torchrun --nproc-per-node N -m lungct train ...`) or with --nproc, every process trains
    its share of each batch (DistributedDataParallel) and rank 0 writes the run; see docs/scale.md.
    """
    from lungct.config import SourceConfig
    from lungct.data.sources import check_sources
    from lungct.distributed import init_distributed
    from lungct.models.registry import get_spec
    from lungct.pipeline.params import load_config_with_params
    from lungct.pipeline.split import train_with_split
    from lungct.tracking import log_training_run, tracked_run
    from lungct.training import train as run_training

    dist = init_distributed()
    if nproc > 1 and not dist.enabled:
        from lungct.cli.launch import relaunch

        return relaunch(nproc, max_restarts)
    setup_logging(quiet or not dist.is_main)
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
    if not split_file:  # a --split-file run takes its images from that file
        check_sources(cfg.data)
    created = dist.is_main and not out.exists()
    if dist.is_main:
        output_folder(out, "--out")  # before tracking: a bad --out leaves no failed MLflow run
    track = not no_track and dist.is_main  # one MLflow run per training, made by rank 0
    try:
        with tracked_run("train", out.resolve().name, config=cfg, tracking_uri=tracking_uri, enabled=track) as t:
            kwargs = {"progress": not quiet, "overwrite": overwrite, "callbacks": [t.epoch_callback()]}
            run = train_with_split(cfg, out, split_file, **kwargs) if split_file else run_training(cfg, out, **kwargs)
            if dist.is_main:
                log_training_run(t, run.path, cfg.train.early_stopping.monitor)
    except Exception:
        if created:
            _remove_if_empty(out)
        raise
    if dist.is_main:
        typer.echo(f"run written to {run.path}")
    return None


def _remove_if_empty(folder: Path) -> None:
    """Remove a --out folder this command created when training failed before writing anything in it (no
    readable images, a bad split): an empty folder left behind looks like a run that had started."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def evaluate_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json and plots")],
    data: Annotated[
        list[Path] | None, typer.Option("--data", exists=True, help="labelled data instead of the run's test part")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="average each slice with its mirror image")] = False,
    hu_offset: HuOffset = None,
    tracking_uri: TrackingUri = None,
    no_track: NoTrack = False,
    quiet: Quiet = False,
) -> None:
    """Evaluate a run on its test part (or on --data) and write metrics.json, plots and a report."""
    from lungct.distributed import init_distributed
    from lungct.evaluation.evaluate import evaluate as run_evaluation
    from lungct.run import RunDir
    from lungct.tracking import log_evaluation, run_config, tracked_run

    RunDir(run).card()  # before tracking: a folder that is not a run, or a damaged model.json, leaves no MLflow run
    dist = init_distributed()  # under torchrun: each rank predicts a shard, rank 0 reports
    if dist.is_main:
        output_folder(out, "--out")
        warn_if_unfinished(run)
    setup_logging(quiet or not dist.is_main)
    name = f"{run.resolve().name}-eval"
    track = not no_track and dist.is_main
    with tracked_run("evaluate", name, config=run_config(run), tracking_uri=tracking_uri, enabled=track) as t:
        data_args = [str(d) for d in data] if data else None
        m = run_evaluation(run, out, data_args, progress=not quiet and dist.is_main, tta=tta, hu_offset=hu_offset)
        if not dist.is_main:
            return
        log_evaluation(t, out, m, run_dir=run)
    typer.echo(
        f"n={m['n']} accuracy={m['accuracy']:.3f} balanced_accuracy={m['balanced_accuracy']:.3f} "
        f"macro_f1={m['macro_f1']:.3f} macro_auc={m['macro_auc'] or float('nan'):.3f} ece={m['ece']:.3f}"
    )
    present = [name for name, c in m["classes"].items() if c["support"]]
    if len(present) < len(m["classes"]):
        typer.echo(
            f"lungct: warning: the data holds {len(present)} of the model's {len(m['classes'])} classes "
            f"({', '.join(present)}): balanced accuracy and AUC cover those only",
            err=True,
        )
    floor = m.get("ece_consistency")
    if floor:
        typer.echo(
            f"a perfectly calibrated model would score ece {floor['p5']:.3f}-{floor['p95']:.3f} on these images "
            f"(median {floor['median']:.3f}; p = {floor['p_value']:.2f} of scoring {m['ece']:.3f} or worse)"
        )
    typer.echo(f"report written to {out}/metrics.json")


def predict_command(
    run: Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")],
    paths: ExistingPaths,
    tta: Annotated[bool, typer.Option("--tta", help="average each slice with its mirror image")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", dir_okay=False, help="write the JSON lines to this file, not stdout")
    ] = None,
    hu_offset: HuOffset = None,
) -> None:
    """Predict image files or folders; one JSON line per file on stdout (or --out).

    DICOM slices are named by file name only: folder names of DICOM exports often carry the patient's name.
    Under torchrun each rank predicts a contiguous share of the files and rank 0 writes all the lines, in the
    order one process writes them.
    """
    from lungct.distributed import current, init_distributed, map_shards
    from lungct.files import atomic_write
    from lungct.inference import Predictor, expand_paths

    setup_logging(True)
    init_distributed()
    predictor = Predictor(run, tta=tta, hu_offset=hu_offset)
    if current().is_main:
        warn_if_unfinished(run)
    files = [str(p) for p in expand_paths(paths)]
    if out is not None and current().is_main:
        output_folder(out.parent, "the folder of --out")  # before predicting, not after
        replaceable_output(out, "--out", "a file of prediction lines", _prediction_lines, [*files, *paths])
    lines = map_shards(
        files, lambda part: [json.dumps(_named(r)) for r in predictor.predict(part)], predictor.batch_size
    )
    if not current().is_main:
        return
    if out is None:
        for line in lines:
            typer.echo(line)
    else:
        atomic_write(out, "".join(f"{line}\n" for line in lines).encode())
    _report_failures(lines)


def _report_failures(lines: list[str]) -> None:
    """Say on stderr how many files failed; exit 1 when none was predicted, so that a script notices.

    A partial batch keeps exit code 0, as its answer is still useful: each failed file has its own line with
    "error", as in the API's batch answer."""
    failed = sum("error" in json.loads(line) for line in lines)
    if failed == 0:
        return
    if failed == len(lines):
        what = "the file" if failed == 1 else f"any of the {failed} files"
        raise LungCTError(f"could not predict {what}; each line names the reason under 'error'")
    typer.echo(f"lungct: warning: {failed} of {len(lines)} files could not be predicted (lines with 'error')", err=True)


def _prediction_lines(head: bytes) -> bool:
    """An earlier `lungct predict --out`: JSON lines, the first naming its file ("path" or "file")."""
    try:
        first = json.loads(head.decode("utf-8").splitlines()[0])
    except (UnicodeDecodeError, ValueError, IndexError):
        return False
    return isinstance(first, dict) and ("path" in first or "file" in first)


def _named(result: dict) -> dict:
    """A DICOM slice's line names the file only (its folders may carry the patient's name)."""
    from lungct.data.images import is_dicom_file

    if is_dicom_file(result["path"]):
        return {"file": Path(result.pop("path")).name, **result}
    return result


def backbones_command() -> None:
    """List the registered backbones."""
    from lungct.models.registry import BACKBONES

    for name, spec in sorted(BACKBONES.items()):
        typer.echo(f"{name:24s} {spec.description}")
