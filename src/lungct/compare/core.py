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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungct.config import ExperimentConfig, load_config
from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.run import RunDir, write_json

log = logging.getLogger("lungct")

# "mobilenetv2_100+probe": that backbone frozen, its head a logistic regression on the frozen features
# (lungct.training.probe), no fine-tuning: the baseline every fine-tuning recipe has to beat.
PROBE_SUFFIX = "+probe"


@dataclass
class CompareSettings:
    archs: list[str]
    out: Path
    weights: str | None = None  # pretrained weights for the config's own backbone only
    threads: int = 1  # torch threads for the latency measurement
    latency_budget_ms: float = 50.0  # per image, for the CPU-only recommendation
    accuracy_tolerance: float = 0.05  # "acceptable accuracy" for the mobile recommendation: this close to the best
    n_bootstrap: int = 1000
    progress: bool = True
    track: bool = False  # one nested MLflow run per backbone (the CLI opens the parent run)
    rows: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        from lungct.models.registry import get_spec

        self.out = Path(self.out)
        self.archs = list(dict.fromkeys(a.strip() for a in self.archs if a.strip()))
        if len(self.archs) < 2:
            raise LungCTError("--archs needs at least two backbones to compare, e.g. mobilenetv2_100,small_cnn")
        for arch in self.archs:
            get_spec(arch.removesuffix(PROBE_SUFFIX))
        if self.threads < 1:
            raise LungCTError(f"--threads must be at least 1, got {self.threads}")


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
        if json.loads(identity_file.read_text()) != identity:
            raise LungCTError(
                f"{out} holds a comparison split from other data, split settings or seed; use another --out"
            )
        return path
    write_split(cfg, path, progress)
    write_json(identity_file, identity)
    return path


def verify_split(run_dir: Path, reference: Path) -> None:
    """Fail loudly when a run was trained on another split than the comparison's."""
    ref = {i.path: (i.label, i.group, i.part) for i in load_split(reference)}
    got = {i.path: (i.label, i.group, i.part) for i in load_split(run_dir / "split.csv")}
    if got != ref:
        moved = sum(1 for p in ref.keys() | got.keys() if ref.get(p) != got.get(p))
        raise LungCTError(
            f"{run_dir} was trained on another split than {reference} ({moved} images differ); "
            "its test scores would not be comparable: delete that run directory and run compare again"
        )


def _same_config(run: RunDir, cfg: ExperimentConfig) -> bool:
    return run.config.is_file() and load_config(run.config).model_dump() == cfg.model_dump()


def _train(cfg: ExperimentConfig, run_dir: Path, split_file: Path, settings: CompareSettings, callbacks) -> bool:
    """Train unless a complete run with this config is there; True if it trained."""
    from lungct.pipeline.split import train_with_split

    run = RunDir(run_dir)
    overwrite = False
    if run.read_summary().get("status") == "complete":
        if _same_config(run, cfg):
            log.info("%s: reusing the finished run in %s", cfg.model.arch, run_dir)
            return False
        log.warning("%s: %s was trained with another config; training it again", cfg.model.arch, run_dir)
        overwrite = True
    log.info("%s: training (%s)", cfg.model.arch, "pretrained weights" if cfg.model.weights else "from scratch")
    train_with_split(cfg, run_dir, split_file, settings.progress, overwrite=overwrite, callbacks=callbacks)
    return True


def _evaluate(run_dir: Path, settings: CompareSettings, trained: bool) -> dict[str, Any]:
    """metrics.json of the run's test part (lungct.evaluation.evaluate), reused when it is newer than the model."""
    from lungct.evaluation.evaluate import evaluate

    eval_dir = run_dir / "eval"
    metrics_file = eval_dir / "metrics.json"
    if (
        not trained
        and metrics_file.is_file()
        and metrics_file.stat().st_mtime >= (run_dir / "model.safetensors").stat().st_mtime
    ):
        metrics = json.loads(metrics_file.read_text())
        if f"{settings.n_bootstrap} resamples" in metrics.get("ci95_method", ""):
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
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    split_file = shared_split(cfg, out, settings.progress)
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for arch in settings.archs:
        arch_cfg = arch_config(cfg, arch, settings.weights)
        run_dir = out / "runs" / arch
        with tracked_run("compare-backbone", arch, config=arch_cfg, nested=True, enabled=settings.track) as t:
            trained = _train(arch_cfg, run_dir, split_file, settings, [t.epoch_callback()])
            verify_split(run_dir, split_file)
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
