"""Crash-safe file writes: every file a run writes is complete or absent, never half-written.

Write to a temporary file in the same folder, fsync it, then rename over the target: a rename within one
file system is atomic, so a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from lungct.errors import LungCTError


def output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (with its parents) and prove a file can be written in it. Commands call this before their
    slow part, so a folder that is a file, read-only or on a missing mount is one line at once, not a traceback
    after the predictions (or the training) it was meant to hold."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = "exists and is not a folder" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
        where = "" if exc.filename in (None, str(path)) else f" ({exc.filename})"
        raise LungCTError(f"{what} {path} cannot be used: {reason}{where}") from None
    return path


def replaceable_output(
    path: str | Path, what: str, kind: str, looks_like: Callable[[bytes], bool], inputs: Iterable[Path] = ()
) -> None:
    """Refuse an output file that would destroy something: one of the command's `inputs`, a file of a run folder
    (a run's split.csv or model.json, replaced, quietly changes what the run is), or an existing file that is not
    an earlier output of this `kind` (`looks_like` judges its first 4 kB). A config or an image given as --out was
    replaced without a word before."""
    path = Path(path)
    target = path.resolve()
    if any(target == Path(p).resolve() for p in inputs):
        raise LungCTError(f"{what} {path} is one of the command's inputs; write to another file")
    if not path.exists():
        return
    if (path.parent / "model.json").is_file():
        raise LungCTError(f"{what} {path} is a file of the run in {path.parent}; write to another file")
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(4096)
        if head and not looks_like(head):
            raise LungCTError(f"{what} {path} exists and is not {kind}; refusing to replace it")


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it to the handler it was meant for.

    A KeyboardInterrupt in the middle of a write (torch.save, a fsync) leaves a .tmp file, and torch's writer
    answers it with a second, unrelated traceback; a write of a few hundred milliseconds is better finished.
    Only the main thread may set signal handlers, and a SIGINT that is ignored or left to the OS is not Python's
    to defer: there the block runs as it is.
    """
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:  # the block finished: now the interrupt it held (KeyboardInterrupt, for Python's own handler)
        previous(signal.SIGINT, None)


def refuse_foreign_output(out: Path, own: Sequence[str], shown: str, command: str) -> None:
    """A command that writes a folder of its own and resumes one it wrote before (cv, compare) refuses an --out
    that holds other files: a trained run, a dataset, someone's notes would get its folders mixed into them, as
    `train` already refuses. `own`: globs of what only this command writes; `shown` names them in the message."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / "model.json").is_file():
        raise LungCTError(f"--out {out} is a trained run; give {command} a new or empty folder")
    if not any(any(out.glob(pattern)) for pattern in own):
        raise LungCTError(
            f"--out {out} holds files but no lungct {command} ({shown}), which {command} would write into; "
            "choose a new or empty folder"
        )


def sqlite_tables(path: Path) -> set[str]:
    """The tables of an SQLite file, opened read-only: checking whose database it is must not write to it.
    sqlite3.Error for a file that is no database."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def refuse_foreign_sqlite(path: Path, own_table: str, what: str) -> None:
    """Refuse an existing SQLite database that holds tables but not `own_table`: MLflow and Optuna would add their
    tables to another program's database without a word. A missing or empty file is fine (it is created)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        tables = sqlite_tables(path)
    except Exception:  # not a database at all: the library's own error says so, named by the caller
        return
    if tables and own_table not in tables:
        raise LungCTError(f"{path} is another program's SQLite database (no {what} tables); choose another file")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all; Ctrl-C waits for the write (sigint_deferred)."""
    tmp = path.with_name(path.name + ".tmp")
    with sigint_deferred():
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


def repeats(keys: Iterable[str]) -> list[tuple[int, int]]:
    """(index of a key's first occurrence, index of a later one) for every repeated key, in order: the one search
    behind the refusals of an image listed twice (a manifest, a split file, the data sources together)."""
    first: dict[str, int] = {}
    return [(first[key], i) for i, key in enumerate(keys) if first.setdefault(key, i) != i]


def natural_key(text: str) -> list:
    """Sort "case (2)" before "case (10)", as slice numbers are meant."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
