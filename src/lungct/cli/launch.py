"""`lungct train --nproc N`: the same command again under PyTorch's own launcher (torch.distributed.run, which
`torchrun` also is), on this machine, so that nothing in lungct schedules processes."""

from __future__ import annotations

import os
import signal

from lungct.errors import LungCTError

# The arguments `lungct.cli.main.main` is parsing, recorded there: the launcher passes them on to each rank.
ARGV: list[str] = []

LAUNCH_OPTIONS = ("--nproc", "--max-restarts")

# Set for the ranks that `lungct train --nproc` starts (launch_env): the launching process speaks for them.
LAUNCHED_ENV = "LUNGCT_LAUNCHED"


def without_launch_options(argv: list[str]) -> list[str]:
    """argv less `--nproc N` and `--max-restarts R` (also in their `--option=value` form)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def launcher_args(nproc: int, max_restarts: int, argv: list[str]) -> list[str]:
    """torch.distributed.run's arguments for this command on `nproc` local ranks."""
    return [
        "--standalone",  # one machine: a local rendezvous on a free port
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "lungct",
        # "--": the launcher's own parser takes the arguments that follow for lungct's, even `--run`, which it
        # would otherwise read as an abbreviation of its `--run-path`
        "--",
        *without_launch_options(argv),
    ]


def launch_env() -> dict[str, str]:
    """The launcher's environment. The workers get their own rendezvous store instead of sharing the agent's:
    with a shared store, a worker group restarted by --max-restarts can read the previous group's addresses
    and fail to connect (pytorch/pytorch#135712)."""
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **os.environ, LAUNCHED_ENV: "1"}


def reports_interrupts() -> bool:
    """Whether this process says "interrupted" on Ctrl-C, which reaches every process of the terminal's group: one
    line per Ctrl-C, so a torchrun rank other than 0 stays silent, and so does every rank `--nproc` started."""
    rank = os.environ.get("RANK")
    return rank is None or (rank == "0" and LAUNCHED_ENV not in os.environ)


def describe_failures(exit_codes: dict[int, int]) -> str:
    """The failed ranks, those that failed on their own first: when one rank fails, the launcher stops the others
    with SIGTERM, and which rank that hits is a race, so a rank ended by a signal is named as such."""

    def describe(code: int) -> str:
        if code >= 0:
            return f"exit code {code}"
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"ended by {name}" + (" after another rank failed" if -code == signal.SIGTERM else "")

    ordered = sorted(exit_codes.items(), key=lambda item: (item[1] < 0, item[0]))
    return "; ".join(f"rank {rank}: {describe(code)}" for rank, code in ordered)


def relaunch(nproc: int, max_restarts: int) -> int:
    """Run this very command on `nproc` ranks with torch.distributed.run's agent (in this process, as the
    `torchrun` script does); a failed worker group ends as one line naming the ranks and exit codes, after the
    workers' own messages, instead of the launcher's traceback."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.update(launch_env())
    try:
        run(parse_args(launcher_args(nproc, max_restarts, ARGV)))
    except SignalException as exc:  # the agent stopped its workers; a Ctrl-C ends as it does for one process
        if exc.sigval != signal.SIGINT:
            raise
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        failed = describe_failures({rank: f.exitcode for rank, f in exc.failures.items()})
        raise LungCTError(f"training on {nproc} processes failed ({failed}); the workers' messages are above") from None
    return 0
