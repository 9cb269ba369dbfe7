"""`lungct compare`: train and test several backbones on one group split and rank them for deployment.

The split is drawn once (OUT/split.csv) and every backbone trains on it; each run's own split.csv is then
checked against it, so the leaderboard never compares models scored on different test images. Only the
config's backbone gets the config's (or --weights) pretrained weights; every other backbone starts from
random weights and is reported as trained from scratch, which is what it is. A backbone whose run is complete
(with the same config) is not trained again, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lungct.compare.settings import PROBE_SUFFIX, CompareSettings
from lungct.config import ExperimentConfig
from lungct.errors import LungCTError
from lungct.files import output_folder, refuse_foreign_output
from lungct.run import RunDir, write_json

log = logging.getLogger("lungct")


def arch_config(cfg: ExperimentConfig, arch: str, weights: str | None = None) -> ExperimentConfig:
    """The experiment with another backbone: pretrained weights only where the weights are made for it.

    A weights file fits one architecture, so other backbones start from random weights; "hub" names each
    backbone's own published weights, so it applies to all of them.
    """
    out = cfg.model_copy(deep=True)
    probe = arch.endswith(PROBE_SUFFIX)
    name, arch = arch, arch.removesuffix(PROBE_SUFFIX)
    if probe:
        out.train.phase1.solver = "logistic"
        out.train.phase2.epochs = 0
        out.model.head.hidden = []
    if arch == cfg.model.arch:
        out.model.weights = weights if weights is not None else cfg.model.weights
    else:
        out.model.weights = "hub" if cfg.model.weights == "hub" else None
    out.model.arch = arch
    out.name = f"{cfg.name}-{name}"
    return out


def _split_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"seed": cfg.seed, "data": cfg.data.model_dump(mode="json"), "split": cfg.split.model_dump(mode="json")}


def shared_split(cfg: ExperimentConfig, out: Path, progress: bool) -> Path:
    """OUT/split.csv, drawn once from the config; refuse an OUT whose split came from other data or settings."""
    from lungct.pipeline.split import write_split

    path, identity_file = out / "split.csv", out / "split_config.json"
    identity = _split_identity(cfg)
    if path.is_file() and identity_file.is_file():
        if json.loads(identity_file.read_text(encoding="utf-8")) != identity:
            raise LungCTError(
                f"{out} holds a comparison split from other data, split settings or seed; use another --out"
            )
        return path
    write_split(cfg, path, progress)
    write_json(identity_file, identity)
    return path


def _train(cfg: ExperimentConfig, run_dir: Path, split_file: Path, settings: CompareSettings, callbacks) -> bool:
    """Train unless a complete run with this config and the comparison's split is there; True if it trained. A run
    left from another split (other data, a split file edited by hand) trains again (lungct.training.train_or_reuse),
    so every row is scored on the same test part."""
    from lungct.pipeline.split import read_split_file
    from lungct.training import train_or_reuse

    log.info("%s: %s", cfg.model.arch, "pretrained weights" if cfg.model.weights else "trained from scratch")
    return train_or_reuse(cfg, run_dir, read_split_file(split_file), settings.progress, callbacks)[1]


def _evaluate(run_dir: Path, settings: CompareSettings, trained: bool) -> dict[str, Any]:
    """metrics.json of the run's test part (lungct.evaluation.evaluate), reused when it is newer than the model."""
    from lungct.evaluation.evaluate import SETTINGS_FILE, TEST_PART, evaluate

    eval_dir = run_dir / "eval"
    metrics_file, settings_file = eval_dir / "metrics.json", eval_dir / SETTINGS_FILE
    wanted = {"n_bootstrap": settings.n_bootstrap, "tta": False, "data": TEST_PART}
    if (
        not trained
        and metrics_file.is_file()
        and settings_file.is_file()
        and metrics_file.stat().st_mtime >= (run_dir / "model.safetensors").stat().st_mtime
    ):
        try:
            same = json.loads(settings_file.read_text(encoding="utf-8")) == wanted
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            same = False
        if same:
            return metrics
    return evaluate(run_dir, eval_dir, None, settings.progress, settings.n_bootstrap)


def compare(cfg: ExperimentConfig, settings: CompareSettings) -> dict[str, Any]:
    """Train, test and profile each backbone; write leaderboard.md/.json/.csv and roc.png into settings.out."""
    from lungct.compare.profile import count_parameters, cpu_latency_ms, cpu_name, flops_per_image
    from lungct.compare.report import build_row, write_reports
    from lungct.run import load_model
    from lungct.tracking import log_evaluation, log_training_run, tracked_run

    if settings.weights is not None and cfg.model.arch not in {a.removesuffix(PROBE_SUFFIX) for a in settings.archs}:
        raise LungCTError(f"--weights is for the config's backbone {cfg.model.arch}, which is not in --archs")
    started = time.time()
    refuse_foreign_output(
        Path(settings.out), ("split_config.json", "leaderboard.json", "runs"), "no split_config.json", "compare"
    )
    out = output_folder(settings.out, "--out")
    split_file = shared_split(cfg, out, settings.progress)
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for arch in settings.archs:
        arch_cfg = arch_config(cfg, arch, settings.weights)
        run_dir = out / "runs" / arch
        with tracked_run("compare-backbone", arch, config=arch_cfg, nested=True, enabled=settings.track) as t:
            trained = _train(arch_cfg, run_dir, split_file, settings, [t.epoch_callback()])
            metrics = _evaluate(run_dir, settings, trained)
            log_training_run(t, run_dir, arch_cfg.train.early_stopping.monitor)
            log_evaluation(t, run_dir / "eval", metrics, run_dir=run_dir)
        runs[arch] = (run_dir, metrics)
    # Costs are measured after all training, one backbone after another in one session, so they compare fairly.
    rows = []
    for arch, (run_dir, metrics) in runs.items():
        model, card = load_model(RunDir(run_dir))
        size = card.preprocess.input_size
        profile = {
            "params": count_parameters(model),
            "mflops": flops_per_image(model, size) / 1e6,
            "latency_ms": cpu_latency_ms(model, size, settings.threads),
        }
        rows.append(build_row(arch, RunDir(run_dir), card, metrics, profile))
        log.info("%s: accuracy %.3f, %.1f ms/image", arch, rows[-1]["accuracy"], profile["latency_ms"]["median"])
    environment = {
        "cpu": cpu_name(),
        "threads": settings.threads,
        "input_sizes": sorted({r["input_size"] for r in rows}),
    }
    result = write_reports(rows, settings, split_file, cfg.split.mode, environment)
    result["seconds_this_session"] = round(time.time() - started, 1)
    write_json(out / "leaderboard.json", result)
    return result
