"""Ctrl-C: every command ends with one line and exit code 130; a file being written is finished first.

typer turns a KeyboardInterrupt into a silent exit 130, so the promised line never appeared; a Ctrl-C in the
middle of a write left a .tmp file (and, inside torch.save, a second traceback).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import typer.core

from lungct import files
from lungct.cli import main
from lungct.cli.launch import LAUNCHED_ENV
from lungct.cli.main import INTERRUPTED
from lungct.files import atomic_write, sigint_deferred


@pytest.fixture(autouse=True)
def plain_env(monkeypatch) -> None:
    """No torchrun rank and no `--nproc` launcher around this process (restored afterwards)."""
    for name in ("RANK", LAUNCHED_ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores it even if it was absent
        monkeypatch.delenv(name)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _assert_interrupted(code: int, capsys) -> None:
    out, err = capsys.readouterr()
    assert code == 130 and out == "" and err == f"{INTERRUPTED}\n"


def test_ctrl_c_in_a_command_is_one_line_and_130(monkeypatch, capsys):
    monkeypatch.setattr("lungct.models.registry.BACKBONES", type("Table", (), {"items": _interrupt})())
    _assert_interrupted(main(["backbones"]), capsys)


def test_ctrl_c_in_a_subcommand_group_is_one_line_and_130(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("lungct.monitoring.feedback.export_feedback", _interrupt)
    log = tmp_path / "log.sqlite"
    _assert_interrupted(main(["feedback", "export", "--log", str(log), "--out", str(tmp_path / "out")]), capsys)


def test_ctrl_c_while_an_extension_module_loads_is_one_line_and_130(monkeypatch, capsys):
    def failed_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # as pybind11 does: "initialization failed", from the interrupt
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr("lungct.models.registry.BACKBONES", type("Table", (), {"items": failed_import})())
    _assert_interrupted(main(["backbones"]), capsys)


def test_ctrl_c_while_typer_parses_is_one_line_and_130(monkeypatch, capsys):
    monkeypatch.setattr(typer.core.TyperCommand, "parse_args", _interrupt)
    _assert_interrupted(main(["backbones"]), capsys)


@pytest.mark.parametrize(
    ("env", "speaks"),
    [
        ({}, True),
        ({"RANK": "0"}, True),  # torchrun's rank 0
        ({"RANK": "1"}, False),
        ({"RANK": "0", LAUNCHED_ENV: "1"}, False),  # a rank of `lungct train --nproc`: its launcher speaks
        ({LAUNCHED_ENV: "1"}, True),  # that launcher
    ],
)
def test_one_process_of_a_group_reports_the_ctrl_c(monkeypatch, capsys, env, speaks):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("lungct.models.registry.BACKBONES", type("Table", (), {"items": _interrupt})())
    assert main(["backbones"]) == 130
    assert capsys.readouterr().err == (f"{INTERRUPTED}\n" if speaks else "")


def test_ctrl_c_under_nproc_is_one_line_and_130(monkeypatch, capsys, tmp_path):
    from torch.distributed.elastic.multiprocessing import SignalException

    def agent_got_sigint(*args, **kwargs):  # what torch.distributed.run's agent raises, its workers stopped
        raise SignalException("Process 1 got signal: 2", sigval=signal.SIGINT)

    monkeypatch.setattr("torch.distributed.run.run", agent_got_sigint)
    _assert_interrupted(main(["train", "--out", str(tmp_path / "run"), "--nproc", "2"]), capsys)


def test_other_errors_are_unchanged(monkeypatch, capsys):
    def failed_import(*args, **kwargs):
        raise ImportError("initialization failed")

    monkeypatch.setattr("lungct.models.registry.BACKBONES", type("Table", (), {"items": failed_import})())
    with pytest.raises(ImportError, match="initialization failed"):  # a bug, not a Ctrl-C: its traceback stays
        main(["backbones"])
    assert main(["backbones", "--nosuch"]) == 2
    assert "No such option: --nosuch" in capsys.readouterr().err


def test_sigint_waits_for_the_block_then_interrupts(python_sigint):
    reached = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_of_its_own_gets_the_held_signal(python_sigint):
    got = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        assert got == []
    assert got == [signal.SIGINT]


def test_deferral_leaves_other_threads_and_an_ignored_sigint_alone(python_sigint):
    errors = []

    def in_thread() -> None:
        try:
            with sigint_deferred():  # signal.signal would raise ValueError outside the main thread
                pass
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors == []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with sigint_deferred():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_atomic_write_finishes_its_file_before_the_interrupt(python_sigint, monkeypatch, tmp_path):
    real_fsync = os.fsync

    def fsync_interrupted(fd: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the data goes to disk
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_interrupted)
    target = tmp_path / "summary.json"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b'{"status": "running"}')
    assert target.read_bytes() == b'{"status": "running"}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_atomic_write_leaves_no_temporary_file(monkeypatch, tmp_path):
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    target: Path = tmp_path / "history.csv"
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"phase,epoch\n")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_stopping_a_server_says_stopped_not_resume(monkeypatch, capsys, tmp_path):
    """Ctrl-C is how `serve` is meant to stop; 'run the same command again to resume' made no sense there."""
    monkeypatch.setattr("lungct.cli.serve.serve", _interrupt)
    assert main(["serve", "--run", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "lungct: stopped\n"
