"""`lungct tune`: an Optuna study over training settings, scored on ONE fixed group-split validation part.

Every trial trains on the same split (drawn once into STUDY/split.csv), so trials differ only in their
settings; the test part is never read during the search. A trial's score is its validation metric at the epoch
whose weights the run keeps (the early-stopping monitor's best), so the score describes the model it leaves.
Poor trials are pruned (MedianPruner) from the trainer's epoch callbacks. The study lives in STUDY/study.db
(SQLite): running the command again continues it up to --trials finished trials, retrying an interrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from lungct.config import ExperimentConfig
from lungct.data.splits import derived_seed
from lungct.errors import LungCTError
from lungct.files import output_folder, refuse_foreign_sqlite
from lungct.run import RunDir
from lungct.training import train_or_reuse
from lungct.tuning.settings import TuneSettings
from lungct.tuning.space import active_knobs, apply_params, grid_space, suggest

log = logging.getLogger("lungct")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def direction(metric: str) -> str:
    return "minimize" if metric.endswith("loss") else "maximize"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (v if k == "phase" else float(v)) for k, v in r.items()} for r in rows]


def kept_epoch(history: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    """The history row whose weights the trainer kept: the first best of the early-stopping monitor."""
    if not history:
        return None
    sign = -1.0 if monitor.endswith("loss") else 1.0
    return max(history, key=lambda r: sign * r[monitor])  # max returns the first of equal maxima, as the trainer


def pruning_callback(trial: optuna.Trial, metric: str):
    """An epoch callback for lungct.training.train: report the validation metric, raise TrialPruned when told."""

    def on_epoch(row: dict) -> None:
        step, value = int(row["step"]), float(row[metric])
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {step}: {metric} {value:.4f}")

    return on_epoch


def _sampler(settings: TuneSettings, cfg: ExperimentConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    # The seed moves on with the study, so a resumed random or TPE search does not repeat its first draws.
    seed = derived_seed(cfg.seed, n_existing)  # the samplers take numpy seeds, at most SEED_MAX
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(cfg), seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, settings.trials // 3)))


def _pruner(settings: TuneSettings) -> optuna.pruners.BasePruner:
    if settings.pruner is not None:
        return settings.pruner
    if not settings.prune:
        return optuna.pruners.NopPruner()
    # Judge from the second epoch on (steps count from 1; optuna skips steps below n_warmup_steps), and only
    # once three trials have finished to compare against.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


def _study_identity(cfg: ExperimentConfig, settings: TuneSettings) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "metric": settings.metric, "sampler": settings.sampler}


def _storage(db: Path) -> optuna.storages.RDBStorage:
    """The study's SQLite storage; a LungCTError when study.db is damaged, another program's database or from an
    Optuna it cannot be migrated from (SQLAlchemy and Optuna raise those with pages of SQL)."""
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    except (SQLAlchemyError, RuntimeError) as exc:
        raise LungCTError(
            f"{db} cannot be opened as an Optuna study ({type(exc).__name__}): it is damaged, not a study "
            "database, or from another Optuna version; use another --study-dir"
        ) from None


class InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a trial that raised with the exception's traceback. A Ctrl-C is no failure to debug: its record
    keeps Optuna's one line ("Trial 0 failed ..."), and lungct then says "interrupted" and how to resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


def open_study(cfg: ExperimentConfig, settings: TuneSettings) -> optuna.Study:
    """Create STUDY/study.db or continue it; refuse one made from another config, metric or sampler."""
    output_folder(settings.study_dir, "study folder")
    refuse_foreign_sqlite(settings.study_dir / "study.db", "studies", "Optuna")
    optuna.logging.set_verbosity(optuna.logging.INFO if settings.progress else optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # optuna's own stderr handler, set up just above
        if not any(isinstance(f, InterruptWithoutTraceback) for f in handler.filters):
            handler.addFilter(InterruptWithoutTraceback())
    storage = _storage(settings.study_dir / "study.db")
    name = cfg.name
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
        n_existing = len(existing.trials)
    except KeyError:
        n_existing = 0
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction(settings.metric),
        sampler=_sampler(settings, cfg, n_existing),
        pruner=_pruner(settings),
        load_if_exists=True,
    )
    identity = _study_identity(cfg, settings)
    stored = {k: study.user_attrs.get(k) for k in identity}
    if n_existing and stored != identity:
        changed = [k for k in identity if stored[k] != identity[k]]
        raise LungCTError(
            f"the study in {settings.study_dir} was made with another {', '.join(changed)}; "
            "use the same settings to continue it, or another --study-dir"
        )
    for key, value in identity.items():
        study.set_user_attr(key, value)
    _retry_interrupted(study, storage, name)
    return study


def _retry_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage, name: str) -> None:
    """A trial left RUNNING was cut off (one tune process per study); mark it failed and queue it again.

    The retry keeps the interrupted trial's run directory, so the trainer resumes from its last epoch.
    """
    study_id = storage.get_study_id_from_name(name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        log.info("trial %d was interrupted; marked as failed", t.number)
    trials = study.get_trials(deepcopy=False)
    if not trials or trials[-1].state != TrialState.FAIL:
        return
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return  # already queued by an earlier resume
    last = trials[-1]
    study.enqueue_trial(last.params, user_attrs={"run_dir": last.user_attrs.get("run_dir", "")})
    log.info("trial %d will be retried with the same parameters", last.number)


class Objective:
    """Train one trial on the study's split and score it; the run directory is STUDY/trials/trial_NNN."""

    def __init__(self, cfg: ExperimentConfig, settings: TuneSettings, split_file: Path):
        self.cfg = cfg
        self.settings = settings
        self.split_file = split_file
        self.knobs = active_knobs(cfg, settings.sampler)

    def __call__(self, trial: optuna.Trial) -> float:
        from lungct.pipeline.split import read_split_file
        from lungct.tracking import log_training_run, tracked_run

        params = suggest(trial, self.knobs)
        cfg = apply_params(self.cfg, params)
        default_dir = self.settings.study_dir / "trials" / f"trial_{trial.number:03d}"
        run_dir = Path(trial.user_attrs.get("run_dir") or default_dir)
        # named after its run directory, not the trial number: a cut-off trial is retried under a new number, and
        # a name that changed with it made the trainer see another config and start the run afresh
        cfg.name = f"{self.cfg.name}-{run_dir.name.replace('_', '')}"
        trial.set_user_attr("run_dir", str(run_dir))
        monitor = cfg.train.early_stopping.monitor
        started, pruned = time.time(), None
        log.info("trial %d: %s", trial.number, _fmt_params(params))
        with tracked_run("tune-trial", run_dir.name, params=params, nested=True, enabled=self.settings.track) as t:
            callbacks = [t.epoch_callback()]
            if self.settings.prune:
                callbacks.append(pruning_callback(trial, self.settings.metric))
            run = RunDir(run_dir)
            try:
                train_or_reuse(cfg, run_dir, read_split_file(self.split_file), self.settings.progress, callbacks)
            except optuna.TrialPruned as exc:
                pruned = exc
                t.set_tags({"lungct.trial_state": "pruned"})
            log_training_run(t, run_dir, monitor)
        history = read_history(run.history)
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        if pruned is not None:
            run.checkpoint.unlink(missing_ok=True)  # a pruned trial is never resumed
            raise pruned
        best = kept_epoch(history, monitor)
        if best is None:
            raise LungCTError(f"trial {trial.number} wrote no history in {run_dir}")
        trial.set_user_attr("kept_step", history.index(best) + 1)
        value = float(best[self.settings.metric])
        log.info("trial %d: %s %.4f", trial.number, self.settings.metric, value)
        return value


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fixed_split(cfg: ExperimentConfig, study_dir: Path, progress: bool) -> Path:
    """STUDY/split.csv, drawn once from the config (group split) and shared by every trial."""
    from lungct.pipeline.split import write_split

    path = study_dir / "split.csv"
    if not path.is_file():
        write_split(cfg, path, progress)
    return path


def tune(cfg: ExperimentConfig, settings: TuneSettings) -> dict[str, Any]:
    """Run (or continue) the study to `settings.trials` finished trials; write the tables, plots and best config."""
    from lungct.tuning.report import write_reports

    started = time.time()
    study = open_study(cfg, settings)
    split_file = _fixed_split(cfg, settings.study_dir, settings.progress)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    remaining = settings.trials - done
    if settings.sampler == "grid":
        size = 1
        for values in grid_space(cfg).values():
            size *= len(values)
        if settings.trials > size:
            log.warning("the grid has %d points: the study stops after %d trials", size, size)
    if remaining > 0:
        log.info("study %s: %d finished trials, running %d more", study.study_name, done, remaining)
        study.optimize(Objective(cfg, settings, split_file), n_trials=remaining, catch=())
    else:
        log.info("study %s already has %d finished trials; writing the reports", study.study_name, done)
    if settings.keep == "best":
        _keep_best_only(study)
    result = write_reports(study, cfg, settings, split_file)
    result["seconds_this_session"] = round(time.time() - started, 1)
    (settings.study_dir / "tune.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _keep_best_only(study: optuna.Study) -> None:
    best = _best_trial(study)
    for t in study.get_trials(deepcopy=False):
        run_dir = t.user_attrs.get("run_dir")
        if run_dir and (best is None or t.number != best.number) and Path(run_dir).is_dir():
            shutil.rmtree(run_dir)


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None
