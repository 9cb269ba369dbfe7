"""Distributed training and prediction on torch.distributed: real gloo processes started by
torch.distributed.run (what `torchrun` is), compared with the single-process path.

The recipe here is deterministic (no dropout, no augmentation, one thread per process) so that a step on two
ranks can be compared with a step in one process. The batch size (10) against 21 training slices leaves a
last global batch of one slice, so one rank gets the padding sample that keeps it in the collectives.
Tolerance: 1e-5 on every weight (measured: under 5e-7; the only difference is the order in which the
gradient's terms are summed).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lungct.cli.launch import describe_failures, launch_env, launcher_args, without_launch_options
from lungct.config import load_config
from lungct.distributed import IGNORE_INDEX, PaddedDataset, ShardedBatches, shard_bounds
from lungct.run import RunDir
from lungct.training import trainer
from lungct.training.trainer import rank_seed, train
from tests.conftest import tiny_config, write_dataset

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-5


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fake_pretrained) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    data = write_dataset(root / "data")
    cfg = tiny_config(data, fake_pretrained, threads=1, batch_size=10)
    cfg.train.augment = cfg.train.augment.model_copy(
        update={"rotation": 0, "shift": 0, "shear": 0, "zoom": 0, "hflip": False}
    )
    cfg.model.head.dropout = 0.0
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 2
    cfg.train.early_stopping.patience = 5
    config = root / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    before = torch.get_num_threads()
    reference = train(load_config(config), root / "single", progress=False)
    torch.set_num_threads(before)
    return {"root": root, "config": config, "data": data, "reference": reference.path}


def _env(**extra: str) -> dict:
    return {**os.environ, "LUNGCT_TRACKING": "off", "PYTHONPATH": str(ROOT), **extra}


def _launch(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group: on a timeout its workers are killed with it, not orphaned."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args[:6])} ... did not finish in {timeout}s\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _max_weight_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def test_two_ranks_equal_one_process_only_rank0_writes_and_a_killed_worker_is_restarted(setup):
    out = setup["root"] / "ddp_killed"
    writes = setup["root"] / "writes"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = _launch(
        [*launcher, "--max-restarts=1", str(WORKER), "train", "--config", str(setup["config"]), "--out", str(out)],
        # rank 1 dies after its 4th batch (3 per epoch): in the fine-tuning phase's first epoch
        # the environment `lungct train --nproc` gives torch.distributed.run (see lungct.cli.launch.launch_env)
        {**launch_env(), **_env(LUNGCT_TEST_KILL_BATCH="4", LUNGCT_TEST_WRITES=str(writes), LUNGCT_TEST_RUN=str(out))},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run written to" in result.stdout
    # the first attempt really failed and the group was restarted
    assert "exitcode: -9" in result.stderr, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["backend"]) == ("complete", 2, "gloo")
    assert _max_weight_difference(out, setup["reference"]) < ATOL
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == len((setup["reference"] / "history.csv").read_text().splitlines()) == 4
    # The audit hook saw rank 0 write the run (so it works) and rank 1 write nothing there, on both attempts.
    rank0 = Path(f"{writes}.rank0").read_text(encoding="utf-8")
    assert "model.safetensors" in rank0 and "checkpoint" in rank0
    assert not Path(f"{writes}.rank1").exists() or Path(f"{writes}.rank1").read_text(encoding="utf-8") == ""


def test_nproc_resumes_a_single_process_run_interrupted_mid_epoch(setup, monkeypatch):
    """Resume with another number of processes: one process stops in the fine-tuning phase, two finish."""
    out = setup["root"] / "resumed"
    seen = {"n": 0}

    def stop_after_batches(point: str) -> None:
        seen["n"] += point == "batch"
        if seen["n"] == 5:
            raise Interrupted

    monkeypatch.setattr(trainer, "KILL_POINT", stop_after_batches)
    before = torch.get_num_threads()
    with pytest.raises(Interrupted):
        train(load_config(setup["config"]), out, progress=False)
    torch.set_num_threads(before)
    assert RunDir(out).checkpoint.is_file() and not RunDir(out).read_summary().complete
    result = _launch(
        [sys.executable, "-m", "lungct", "train", "--config", str(setup["config"]), "--out", str(out), "--nproc", "2"],
        _env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert _max_weight_difference(out, setup["reference"]) < ATOL

    # The same command again: every worker refuses the finished run, and the launch ends as one line.
    again = _launch(
        [sys.executable, "-m", "lungct", "train", "--config", str(setup["config"]), "--out", str(out), "--nproc", "2"],
        _env(),
    )
    assert again.returncode == 1
    assert "already holds a finished run" in again.stderr
    last = again.stderr.strip().splitlines()[-1]
    # Which rank fails first is a race (the launcher then stops the other), but the message leads with a rank
    # that failed on its own.
    assert re.match(r"lungct: error: training on 2 processes failed \(rank [01]: exit code 1[;)]", last), last
    assert "Traceback" not in again.stderr


def test_sharded_prediction_over_two_ranks_is_byte_identical_to_one_process(setup):
    run, data = setup["reference"], setup["data"]
    # One thread, as torch.distributed.run gives each rank (OMP_NUM_THREADS=1): a batch's floating-point sums
    # are the same only at the same thread count.
    single = _launch(
        [sys.executable, "-m", "lungct", "predict", "--run", str(run), str(data)], _env(OMP_NUM_THREADS="1")
    )
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    # "--" ends the launcher's options (without it, it reads `--run` as its own `--run-path`)
    sharded = _launch([*launcher, "-m", "lungct", "--", "predict", "--run", str(run), str(data)], _env())
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    lines = single.stdout.splitlines()
    assert len(lines) == 36 and all(json.loads(line)["label"] for line in lines)
    assert sharded.stdout.encode() == single.stdout.encode()


def test_sharded_evaluation_over_two_ranks_writes_the_single_process_report(setup, tmp_path):
    run, data = setup["reference"], setup["data"]
    outs = {"one": tmp_path / "one", "two": tmp_path / "two"}
    args = ["evaluate", "--run", str(run), "--data", str(data), "-q"]
    single = _launch([sys.executable, "-m", "lungct", *args, "--out", str(outs["one"])], _env(OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    sharded = _launch([*launcher, "-m", "lungct", "--", *args, "--out", str(outs["two"])], _env())
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert sharded.stdout.count("n=36 accuracy=") == 1  # rank 0 alone reports
    for name in ("metrics.json", "predictions.csv", "classification_report.txt"):
        assert (outs["two"] / name).read_bytes() == (outs["one"] / name).read_bytes(), name


def test_shards_are_contiguous_whole_batches_that_cover_everything_once():
    for n in (0, 1, 5, 31, 32, 33, 100):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world, block=8) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            assert all(start % 8 == 0 for start, _ in bounds)


def test_each_rank_takes_its_slice_of_every_global_batch_and_a_padding_sample_when_empty():
    batches = [[4, 1, 3, 0, 2], [5]]
    parts = [list(ShardedBatches(batches, r, 2)) for r in range(2)]
    assert parts[0] == [[4, 1], [-6]]  # the last batch has one slice: rank 1 takes it, rank 0 gets padding
    assert parts[1] == [[3, 0, 2], [5]]
    padded = PaddedDataset([("x0", 0), ("x5", 5)])
    assert padded[-2] == ("x5", IGNORE_INDEX)
    assert padded[1] == ("x5", 5)


def test_each_rank_and_epoch_draws_from_its_own_stream_and_a_resumed_epoch_from_the_same():
    seeds = {
        (phase, epoch, rank): rank_seed(42, phase, epoch, rank)
        for phase in (0, 1)
        for epoch in range(3)
        for rank in range(4)
    }
    assert len(set(seeds.values())) == len(seeds)
    assert rank_seed(42, 1, 2, 3) == seeds[(1, 2, 3)] and rank_seed(43, 1, 2, 3) != seeds[(1, 2, 3)]
    assert all(0 <= seed < 2**63 for seed in seeds.values())


def test_the_launcher_gets_the_same_command_without_the_launch_options():
    argv = ["train", "--config", "c.yaml", "--nproc", "4", "--out", "r", "--max-restarts=2"]
    assert without_launch_options(argv) == ["train", "--config", "c.yaml", "--out", "r"]
    command = launcher_args(4, 2, argv)
    assert "--nproc-per-node=4" in command and "--max-restarts=2" in command
    assert command[-8:] == ["-m", "lungct", "--", "train", "--config", "c.yaml", "--out", "r"]


def test_a_failed_launch_names_first_the_ranks_that_failed_on_their_own():
    message = describe_failures({0: -signal.SIGTERM, 1: 1, 2: -signal.SIGKILL})
    assert message == (
        "rank 1: exit code 1; rank 0: ended by SIGTERM after another rank failed; rank 2: ended by SIGKILL"
    )
