"""Ctrl-C during `lungct train`: one line, exit 130, no traceback, no checkpoint_last.pt.tmp; then it resumes.

Before, the line never appeared (typer swallowed the KeyboardInterrupt), and a Ctrl-C inside torch.save left
checkpoint_last.pt.tmp and a second traceback from torch's zip writer.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lungct.cli.main import INTERRUPTED
from lungct.config import save_config
from lungct.training import trainer
from lungct.training.trainer import save_checkpoint
from tests.conftest import tiny_config, write_dataset

# The child starts with Python's own SIGINT handler, as a terminal's Ctrl-C finds it, whatever this process (a
# background shell, a test runner) left it at: an ignored SIGINT is inherited, and would never interrupt.
CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from lungct.cli.main import run; run()"
)
EPOCHS = 40  # small_cnn from scratch: one phase of 20 + 20 epochs, a fraction of a second each


def test_ctrl_c_inside_a_checkpoint_write_finishes_the_checkpoint(python_sigint, monkeypatch, tmp_path):
    def ctrl_c(point: str) -> None:
        if point == "checkpoint-half-written":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(trainer, "KILL_POINT", ctrl_c)
    path = tmp_path / "checkpoint_last.pt"
    payload = {"state": {"epoch": 3}, "model": {"w": torch.arange(100_000, dtype=torch.float32)}}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(payload, path)
    saved = torch.load(path, weights_only=False)
    assert saved["state"] == {"epoch": 3} and torch.equal(saved["model"]["w"], payload["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(Exception, match=r"pickle|lambda"):
        save_checkpoint({"state": {}, "bad": lambda: None}, tmp_path / "checkpoint_last.pt")
    assert list(tmp_path.iterdir()) == []


def _rows(history: Path) -> list[dict]:
    if not history.is_file():
        return []
    with history.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _train(config: Path, out: Path, *options: str) -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, "train", "--config", str(config), "--out", str(out), "--no-track", *options]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_during_training_is_one_line_and_the_run_resumes(tmp_path):
    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=8))
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = EPOCHS // 2, EPOCHS - EPOCHS // 2
    cfg.train.early_stopping.patience = EPOCHS
    save_config(cfg, tmp_path / "config.yaml")
    out = tmp_path / "run"

    child = _train(tmp_path / "config.yaml", out, "-q")
    deadline = time.monotonic() + 60
    while len(_rows(out / "history.csv")) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = child.communicate(timeout=60)
    done = len(_rows(out / "history.csv"))
    assert child.returncode == 130, err
    assert err.splitlines()[-1] == INTERRUPTED and err.count(INTERRUPTED) == 1
    assert "Traceback" not in err
    assert not list(out.glob("*.tmp")) and (out / "checkpoint_last.pt").is_file()
    assert 2 <= done < EPOCHS

    before = [(r["phase"], r["epoch"], r["val_loss"]) for r in _rows(out / "history.csv")]
    again = _train(tmp_path / "config.yaml", out)  # not quiet: it says where it resumes
    stdout, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert stdout.strip() == f"run written to {out}" and "resuming from phase 1, epoch" in err
    rows = _rows(out / "history.csv")
    assert len(rows) == EPOCHS and [(r["phase"], r["epoch"], r["val_loss"]) for r in rows[:done]] == before
    assert not (out / "checkpoint_last.pt").exists()  # a finished run keeps no checkpoint
