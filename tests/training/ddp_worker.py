"""What tests/training/test_distributed.py has torch.distributed.run start on each rank: `lungct` itself, plus
two test seams set by environment variables.

LUNGCT_TEST_WRITES=FILE: each rank records every file it opens for writing, renames, removes or makes as a
folder under LUNGCT_TEST_RUN into FILE.rankN (Python's audit hooks see every such call; lungct writes
weights and checkpoints through open() and os.replace too).
LUNGCT_TEST_KILL_BATCH=N: rank 1 SIGKILLs itself after its N-th training batch, on the first attempt only,
so that torchrun's --max-restarts has something to restart.
"""

from __future__ import annotations

import os
import signal
import sys

from lungct.cli.main import main
from lungct.distributed import restart_count
from lungct.training import trainer

RANK = int(os.environ.get("RANK", "0"))


def record_writes(log_path: str, run_dir: str) -> None:
    run_dir = os.path.realpath(run_dir)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            paths = [path] if writing else []
        elif event in ("os.rename", "os.replace"):
            paths = list(args[:2])
        elif event in ("os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
            paths = [args[0]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)) and not isinstance(p, int):
                real = os.path.realpath(os.fsdecode(p))
                if real == run_dir or real.startswith(run_dir + os.sep):
                    with open(log_path, "a", encoding="utf-8") as fh:  # outside the run directory
                        fh.write(f"{event} {real}\n")

    sys.addaudithook(hook)


def kill_after(batches: int) -> None:
    seen = {"n": 0}

    def kill_point(point: str) -> None:
        if point == "batch":
            seen["n"] += 1
            if seen["n"] == batches:
                os.kill(os.getpid(), signal.SIGKILL)

    trainer.KILL_POINT = kill_point


if __name__ == "__main__":
    if os.environ.get("LUNGCT_TEST_WRITES"):
        record_writes(f"{os.environ['LUNGCT_TEST_WRITES']}.rank{RANK}", os.environ["LUNGCT_TEST_RUN"])
    if RANK == 1 and os.environ.get("LUNGCT_TEST_KILL_BATCH") and restart_count() == 0:
        kill_after(int(os.environ["LUNGCT_TEST_KILL_BATCH"]))
    sys.exit(main(sys.argv[1:]))
