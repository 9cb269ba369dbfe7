"""Crash safety: training killed (SIGKILL) anywhere, a checkpoint write included, resumes to the same result.

The kill lands at the trainer's KILL_POINT seam: after a batch, after the weights, the history or the
checkpoint are written, and inside the checkpoint write (data written but not fsynced, fsynced but not yet
renamed). Each case kills a fresh child process at one point, then finishes the run in this process and
compares its weights and history with an uninterrupted run's. The child is forked (not spawned): a
fresh interpreter per kill would spend most of the test importing torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lungct.training import trainer
from lungct.training.trainer import train
from tests.conftest import tiny_config, write_dataset

N_KILLS = 22


def _config(data: Path, weights: Path):
    cfg = tiny_config(data, weights)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 2
    cfg.train.early_stopping.patience = 5
    return cfg


def _killed_at(data: str, weights: str, out: str, target: int) -> None:
    """Child process: train and SIGKILL ourselves at the `target`-th kill point (1-based)."""
    seen = {"n": 0}

    def kill_point(point: str) -> None:
        seen["n"] += 1
        if seen["n"] == target:
            os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)  # the child owns no thread pool of the parent's
    trainer.KILL_POINT = kill_point
    train(_config(Path(data), Path(weights)), out, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Reference, killed child and resume all on one thread: float sums differ across thread counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fake_pretrained, _one_thread):
    root = tmp_path_factory.mktemp("kill")
    data = write_dataset(root / "data", per_class=6)
    points: list[str] = []
    trainer.KILL_POINT = points.append
    try:
        run = train(_config(data, fake_pretrained), root / "reference", progress=False)
    finally:
        trainer.KILL_POINT = trainer._no_kill
    return data, fake_pretrained, points, load_file(str(run.weights)), run.history.read_text()


def _targets(points: list[str]) -> list[int]:
    """Every checkpoint-write point, topped up with points spread evenly over the rest of the run."""
    writes = [i + 1 for i, p in enumerate(points) if p.startswith("checkpoint")]
    others = [i + 1 for i, p in enumerate(points) if not p.startswith("checkpoint")]
    step = max(1, len(others) // max(1, N_KILLS - len(writes)))
    return sorted(set(writes + others[::step]))


def test_the_run_has_kill_points_in_both_phases_and_the_checkpoint_write(reference):
    _, _, points, _, history = reference
    assert {"batch", "weights", "history", "checkpoint", "checkpoint-half-written", "checkpoint-before-rename"} <= set(
        points
    )
    assert "head," in history and "finetune," in history
    assert len(_targets(points)) >= 20


def test_a_kill_anywhere_resumes_to_the_uninterrupted_result(reference, tmp_path):
    data, weights, points, expected_weights, expected_history = reference
    ctx = mp.get_context("fork")  # a fresh interpreter per kill would cost seconds of imports each
    for target in _targets(points):
        out = tmp_path / f"killed_{target}"
        child = ctx.Process(target=_killed_at, args=(str(data), str(weights), str(out), target))
        child.start()
        child.join(timeout=300)
        assert child.exitcode == -signal.SIGKILL, f"kill point {target} ({points[target - 1]}) was not reached"
        run = train(_config(data, weights), out, progress=False)  # resumes, or starts clean, with a message
        got = load_file(str(run.weights))
        assert got.keys() == expected_weights.keys()
        assert all((got[k] == expected_weights[k]).all() for k in got), f"weights differ after kill {target}"
        history = run.history.read_text()
        strip = [line.rsplit(",", 1)[0] for line in history.splitlines()]  # drop the epoch's wall-clock seconds
        assert strip == [line.rsplit(",", 1)[0] for line in expected_history.splitlines()], f"kill {target}"
