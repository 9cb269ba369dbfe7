"""Crash-safe file writes: every file a run writes is complete or absent, never half-written.

Write to a temporary file in the same folder, fsync it, then rename over the target: a rename within one
file system is atomic, so a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


def natural_key(text: str) -> list:
    """Sort "case (2)" before "case (10)", as slice numbers are meant."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
