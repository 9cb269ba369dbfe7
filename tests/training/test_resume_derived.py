"""A run trained further drops what was derived from its earlier weights; commands warn on an unfinished run.

The bug: calibrate (or export, evaluate) an interrupted run, resume its training, and predict applied the
temperature fitted to the old weights to the new ones, in silence.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lungct.cli import main
from lungct.inference import Predictor
from lungct.run import RunDir, load_model
from lungct.training import train
from tests.conftest import tiny_config, write_dataset

EPOCHS = 6  # small_cnn trains from scratch: one phase of phase1 + phase2 epochs
STOP_AFTER = 2
UNFINISHED = "is an unfinished run (summary.json status 'running'"


class Stop(KeyboardInterrupt):
    """Ctrl-C after an epoch, as the user would press it."""


def _config(data: Path):
    cfg = tiny_config(data)
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = EPOCHS // 2, EPOCHS - EPOCHS // 2
    cfg.train.early_stopping.patience = EPOCHS  # every epoch runs: the resumed history has a known length
    return cfg


def _stop_after(epochs: int):
    def callback(row: dict) -> None:
        if row["step"] == epochs:
            raise Stop

    return callback


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(an interrupted run, its data): two of its six epochs done, summary.json "running", a checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    data = write_dataset(root / "data")
    with pytest.raises(Stop):
        train(_config(data), root / "run", progress=False, callbacks=[_stop_after(STOP_AFTER)])
    run = RunDir(root / "run")
    assert run.read_summary().status == "running" and run.checkpoint.is_file()
    return run.path, data


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


def _history(run: Path) -> list[tuple[str, ...]]:
    """history.csv's rows less their timing."""
    with (run / "history.csv").open(encoding="utf-8", newline="") as fh:
        return [tuple(v for k, v in row.items() if k != "seconds") for row in csv.DictReader(fh)]


def _batch(n: int = 6) -> np.ndarray:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7)).numpy()


def test_resuming_removes_the_calibration_of_the_earlier_weights(interrupted, tmp_path, capsys, caplog):
    source, data = interrupted
    run = _copy(source, tmp_path)
    assert main(["calibrate", "--run", str(run), "-q"]) == 0
    assert UNFINISHED in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--out", str(run / "eval"), "-q"]) == 0
    (run / "operating_points.json").write_text('{"threshold": 0.3}')  # threshold --out RUN, read by the DICOM node
    (run / "notes.txt").write_text("mine")  # not lungct's: stays
    assert (run / "calibration.json").is_file() and (run / "calibration").is_dir()
    history_before = _history(run)
    weights_before = (run / "model.safetensors").read_bytes()

    with caplog.at_level(logging.WARNING, logger="lungct"):
        train(_config(data), run, progress=False)

    for name in ("calibration.json", "calibration", "eval", "operating_points.json"):
        assert not (run / name).exists(), name
    assert (run / "notes.txt").read_text() == "mine"
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert len(removed) == 1 and "calibration.json" in removed[0] and "calibration/" in removed[0]
    # it resumed (the first epochs kept), ran to the end and changed the weights
    history = _history(run)
    assert history[:STOP_AFTER] == history_before and len(history) == EPOCHS
    assert RunDir(run).read_summary().status == "complete"
    assert (run / "model.safetensors").read_bytes() != weights_before

    predictor = Predictor(run, backend="torch")
    assert predictor.calibration is None
    model, _ = load_model(RunDir(run))
    with torch.inference_mode():
        softmax = torch.softmax(model(torch.from_numpy(_batch())), 1).numpy()
    np.testing.assert_allclose(predictor.probabilities(_batch()), softmax, atol=1e-5)


def test_resuming_removes_exports_of_the_earlier_weights(interrupted, tmp_path, capsys, caplog):
    source, data = interrupted
    run = _copy(source, tmp_path)
    assert main(["export", "--run", str(run)]) == 0
    assert UNFINISHED in capsys.readouterr().err
    assert (run / "model.onnx").is_file() and (run / "export.json").is_file()
    with caplog.at_level(logging.WARNING, logger="lungct"):
        train(_config(data), run, progress=False)
    assert not (run / "model.onnx").exists() and not (run / "export.json").exists()
    assert any("model.onnx, export.json" in r.getMessage() for r in caplog.records)


def test_a_new_run_says_nothing_about_removing(tmp_path, caplog):
    data = write_dataset(tmp_path / "data", per_class=6)
    cfg = _config(data)
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    with caplog.at_level(logging.WARNING, logger="lungct"):
        train(cfg, tmp_path / "run", progress=False)
    assert not [r for r in caplog.records if "removed" in r.getMessage()]


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "export", "familiarity"])
def test_commands_warn_about_an_unfinished_run(interrupted, tmp_path, capsys, command):
    run = _copy(interrupted[0], tmp_path)
    argv = [command, "--run", str(run)] + (["--out", str(tmp_path / "eval")] if command == "evaluate" else [])
    assert main(argv + (["-q"] if command != "export" else [])) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lungct: warning:")]
    assert len(warnings) == 1 and UNFINISHED in warnings[0] and "intermediate checkpoint" in warnings[0]


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_commands_do_not_warn_about_a_finished_run(interrupted, tmp_path, capsys, command):
    run = _copy(interrupted[0], tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "complete"}))
    argv = [command, "--run", str(run), "-q"] + (["--out", str(tmp_path / "eval")] if command == "evaluate" else [])
    assert main(argv) == 0
    assert "lungct: warning" not in capsys.readouterr().err
