"""Received instances on disk, one folder per series, until the series is quiet and its analysis takes it.

Layout under the spool root (created private to the user, since the files carry the patient module):
`incoming/<study>/<series>/<instance>.dcm`, where each name is a short hash of the UID (ids.short_id), so
no folder or file name carries a UID or a patient tag. A quiet series is claimed by renaming its folder into
`work/` (atomic), analysed there and removed; a folder left in `work/` by a crash is analysed again on the next
start, and the results' UIDs, derived from the input, are the same as before. The spool holds at most
`max_bytes`: an instance that would pass it is refused (the Storage SCP answers "out of resources").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

from lungct.errors import LungCTError
from lungct.pacs.ids import short_id


class SpoolFull(LungCTError):
    """The spool has no room for an instance; the sender may try again later."""


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


class Spool:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.incoming, self.work = self.root / "incoming", self.root / "work"
        for folder in (self.root, self.incoming, self.work):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = _size(self.incoming) + _size(self.work)
        now = time.monotonic()
        # series folder -> when its last instance came; after a restart the quiet time starts again
        self._last: dict[Path, float] = {d: now for d in self.incoming.glob("*/*") if d.is_dir()}

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one instance (the same instance again replaces it); SpoolFull when over the limit."""
        folder = self.incoming / short_id(study_uid) / short_id(series_uid)
        path = folder / f"{short_id(sop_uid)}.dcm"
        with self._lock:
            old = path.stat().st_size if path.is_file() else 0
            if self._bytes - old + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool is full ({self.max_bytes // 2**20} MiB)")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = folder / f".{path.name}.tmp"  # hidden: a series reader skips it
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            self._bytes += len(data) - old
            self._last[folder] = time.monotonic()
        return path

    def quiet(self, seconds: float) -> list[Path]:
        """Series folders that have received nothing for `seconds` (all of them with seconds <= 0)."""
        now = time.monotonic()
        with self._lock:
            return [d for d, t in self._last.items() if now - t >= seconds]

    def pending(self) -> list[Path]:
        """Every series folder still receiving."""
        with self._lock:
            return list(self._last)

    def claim(self, series_dir: Path) -> Path:
        """Move a series folder into work/ for analysis; instances that come later start a new folder."""
        with self._lock:
            self._last.pop(series_dir, None)
            target = self.work / f"{series_dir.parent.name}-{series_dir.name}-{time.time_ns()}"
            os.replace(series_dir, target)
            with contextlib.suppress(OSError):
                series_dir.parent.rmdir()  # the study folder, when it has no other series
        return target

    def claimed(self) -> list[Path]:
        """Series folders in work/: being analysed now, or left there by a crash (analysed again at start)."""
        return sorted(d for d in self.work.iterdir() if d.is_dir())

    def release(self, work_dir: Path) -> None:
        """Delete an analysed (or failed) series: the sending PACS keeps its own copy."""
        size = _size(work_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
        with self._lock:
            self._bytes = max(0, self._bytes - size)
