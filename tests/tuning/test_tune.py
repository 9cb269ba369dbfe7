"""`lungct tune`: a resumable Optuna study on one fixed split, pruning, reports and the best config."""

import csv

import optuna
import pytest
import yaml

from lungct.cli import main
from lungct.config import load_config, save_config
from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.tuning.settings import TuneSettings
from lungct.tuning.space import active_knobs, apply_params, grid_space
from lungct.tuning.study import open_study, pruning_callback, tune
from tests.conftest import tiny_config


def _quick(data, weights=None):
    cfg = tiny_config(data, weights)
    cfg.train.phase1.epochs = 1
    cfg.train.phase2.epochs = 1
    return cfg


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_study_runs_resumes_to_n_trials_and_writes_best_config(tiny_dataset, fake_pretrained, tmp_path):
    cfg = _quick(tiny_dataset, fake_pretrained)
    settings = TuneSettings(trials=2, study_dir=tmp_path / "study", sampler="random", prune=False, progress=False)
    first = tune(cfg, settings)
    assert first["n_complete"] == 2
    assert (tmp_path / "study" / "study.db").is_file()

    settings.trials = 3  # the same command with more trials continues the study
    result = tune(cfg, settings)
    assert result["n_complete"] == 3
    rows = _rows(tmp_path / "study" / "results.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2]
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first (balanced accuracy is maximised)
    assert {"phase1_lr", "phase2_lr", "dropout", "unfreeze", "augment_strength", "class_weights"} <= set(rows[0])

    # every trial trained on the study's one split, and the test part was never scored
    shared = load_split(tmp_path / "study" / "split.csv")
    for r in rows:
        assert load_split(tmp_path / "study" / "trials" / f"trial_{int(r['trial']):03d}" / "split.csv") == shared
    assert not list((tmp_path / "study").rglob("metrics.json"))

    best = load_config(tmp_path / "study" / "best_config.yaml")
    assert best.name == "tiny-tuned"
    params = result["best_params"]
    assert best.model.head.dropout == pytest.approx(params["dropout"])
    assert best.train.phase1.lr == pytest.approx(params["phase1_lr"])
    assert best.train.class_weights is params["class_weights"]
    assert (tmp_path / "study" / "history.png").is_file()
    md = (tmp_path / "study" / "results.md").read_text()
    assert "| trial | state | val_balanced_accuracy |" in md and "test part was not used" in md

    cfg.seed = 1  # another config must not be mixed into this study
    with pytest.raises(LungCTError, match="another config"):
        tune(cfg, settings)


def test_pruning_callback_raises_trial_pruned_only_when_the_pruner_says_so():
    prune_all = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    callback = pruning_callback(prune_all.ask(), "val_balanced_accuracy")
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1"):
        callback({"val_balanced_accuracy": 0.5, "val_loss": 1.0, "step": 1})

    keep_all = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = keep_all.ask()
    pruning_callback(trial, "val_balanced_accuracy")({"val_balanced_accuracy": 0.5, "step": 1})
    assert keep_all.trials[0].intermediate_values == {1: 0.5}


def test_all_trials_pruned_still_reports_gracefully(tiny_dataset, fake_pretrained, tmp_path):
    cfg = _quick(tiny_dataset, fake_pretrained)
    prune_everything = optuna.pruners.ThresholdPruner(lower=2.0)
    settings = TuneSettings(trials=2, study_dir=tmp_path / "s", sampler="tpe", progress=False, pruner=prune_everything)
    result = tune(cfg, settings)
    assert result["n_pruned"] == 2 and result["n_complete"] == 0
    assert result["best_trial"] is None and not (tmp_path / "s" / "best_config.yaml").exists()
    assert "importances need at least two" in result["importances_note"]
    assert all(r["epochs"] == 1 for r in result["trials"])  # stopped after the first epoch
    assert not list((tmp_path / "s" / "trials").rglob("checkpoint_last.pt"))


def test_interrupted_trial_is_marked_failed_and_queued_again(tiny_dataset, tmp_path):
    cfg = _quick(tiny_dataset)
    settings = TuneSettings(trials=3, study_dir=tmp_path / "s", sampler="random", progress=False)
    study = open_study(cfg, settings)
    cut_off = study.ask()  # a trial whose process was killed stays RUNNING in the database
    cut_off.suggest_float("dropout", 0.0, 0.6)
    cut_off.set_user_attr("run_dir", str(tmp_path / "s" / "trials" / "trial_000"))

    study = open_study(cfg, settings)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    retry = study.ask()  # the next trial is the retry: same parameters, same run directory (the trainer resumes)
    assert retry.suggest_float("dropout", 0.0, 0.6) == study.trials[0].params["dropout"]
    assert retry.user_attrs["run_dir"].endswith("trial_000")


def test_search_space_grid_and_from_scratch_knobs(tiny_dataset, fake_pretrained):
    pretrained = tiny_config(tiny_dataset, fake_pretrained)
    scratch = tiny_config(tiny_dataset)
    assert {k.name for k in active_knobs(scratch, "tpe")} == {
        "phase1_lr",
        "dropout",
        "augment_strength",
        "class_weights",
    }
    assert "unfreeze" in {k.name for k in active_knobs(pretrained, "tpe")}
    grid = grid_space(pretrained)
    assert len(grid) == 3 and all(len(v) == 2 for v in grid.values())

    tuned = apply_params(pretrained, {"augment_strength": 0.0, "unfreeze": 0.25, "class_weights": False})
    aug = tuned.train.augment
    assert (aug.rotation, aug.shift, aug.shear, aug.zoom) == (0, 0, 0, 0)
    assert tuned.train.phase2.unfreeze == 0.25 and tuned.train.class_weights is False
    assert pretrained.train.augment.rotation == 10  # the base config is untouched


def test_tune_cli_grid_and_bad_trials(tiny_dataset, tmp_path, capsys):
    cfg = _quick(tiny_dataset)
    save_config(cfg, tmp_path / "c.yaml")
    argv = ["tune", "--config", str(tmp_path / "c.yaml"), "--study-dir", str(tmp_path / "s"), "-q"]
    assert main([*argv, "--trials", "1", "--sampler", "grid", "--keep", "best"]) == 0
    out = capsys.readouterr().out
    assert "1 completed" in out and "best config written" in out
    best = yaml.safe_load((tmp_path / "s" / "best_config.yaml").read_text())
    assert best["model"]["head"]["dropout"] in (0.2, 0.5)

    assert main([*argv, "--trials", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "lungct: error: --trials must be at least 1, got 0"


@pytest.mark.parametrize("kind", ["garbage", "folder"])
def test_a_study_db_that_cannot_be_opened_is_one_line(tiny_dataset, tmp_path, capsys, kind):
    cfg = _quick(tiny_dataset)
    save_config(cfg, tmp_path / "c.yaml")
    db = tmp_path / "s" / "study.db"
    if kind == "garbage":
        db.parent.mkdir()
        db.write_bytes(b"\x00not an sqlite database\xff" * 200)
    else:
        db.mkdir(parents=True)
    argv = ["tune", "--config", str(tmp_path / "c.yaml"), "--study-dir", str(tmp_path / "s"), "--trials", "1", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "study.db cannot be opened as an Optuna study" in err and len(err.strip().splitlines()) == 1, err


def test_another_programs_database_is_refused_untouched(tiny_dataset, tmp_path, capsys):
    """Optuna added its tables to it, and a new study began there."""
    import sqlite3

    cfg = _quick(tiny_dataset)
    save_config(cfg, tmp_path / "c.yaml")
    db = tmp_path / "s" / "study.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE patients (id INTEGER)")
    argv = ["tune", "--config", str(tmp_path / "c.yaml"), "--study-dir", str(tmp_path / "s"), "--trials", "1", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"lungct: error: {db} is another program's SQLite database (no Optuna tables); choose another file"
    )
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["patients"]


def test_a_trial_stopped_by_ctrl_c_is_logged_without_a_traceback():
    import logging

    from lungct.tuning.study import InterruptWithoutTraceback

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            import sys

            return logging.LogRecord("optuna", logging.WARNING, __file__, 1, "Trial 0 failed", None, sys.exc_info())

    stopped, failed = record(KeyboardInterrupt()), record(ValueError("a real failure"))
    assert InterruptWithoutTraceback().filter(stopped) and InterruptWithoutTraceback().filter(failed)
    formatter = logging.Formatter()
    assert formatter.format(stopped) == "Trial 0 failed"
    assert "Traceback" in formatter.format(failed) and "a real failure" in formatter.format(failed)


def test_a_trial_cut_off_mid_way_resumes_from_its_last_epoch(tiny_dataset, fake_pretrained, tmp_path, monkeypatch):
    """The retry, a new trial number, used to be named after that number: the trainer saw another config in the
    run directory and trained it again from epoch 1, so the cut-off epochs were lost."""
    from lungct.tuning import study as study_module

    cfg = _quick(tiny_dataset, fake_pretrained)
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 3, 0
    settings = TuneSettings(trials=1, study_dir=tmp_path / "s", sampler="random", progress=False, track=False)
    study = open_study(cfg, settings)
    split_file = study_module._fixed_split(cfg, settings.study_dir, False)

    def ctrl_c_after_two(trial, metric):
        def on_epoch(row: dict) -> None:
            if int(row["step"]) == 2:
                raise KeyboardInterrupt

        return on_epoch

    monkeypatch.setattr(study_module, "pruning_callback", ctrl_c_after_two)
    cut_off = study.ask()
    with pytest.raises(KeyboardInterrupt):
        study_module.Objective(cfg, settings, split_file)(cut_off)
    run_dir = tmp_path / "s" / "trials" / "trial_000"
    first_session = _rows(run_dir / "history.csv")
    assert len(first_session) == 2 and (run_dir / "checkpoint_last.pt").is_file()

    monkeypatch.undo()
    study = open_study(cfg, settings)  # marks the cut-off trial failed and queues it again
    retry = study.ask()
    assert retry.number == 1 and retry.user_attrs["run_dir"] == str(run_dir)
    study_module.Objective(cfg, settings, split_file)(retry)
    history = _rows(run_dir / "history.csv")
    # epoch 1 is kept as written, timing and all (a run trained afresh would time it again); epoch 2, cut off
    # before its checkpoint, is trained again from epoch 1's, to the same figures
    assert len(history) == 3 and history[0] == first_session[0]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history[:2]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in first_session
    ]
