"""What the scan learnt about each file, kept between runs: a second run over unchanged files reads this
instead of decoding and hashing every image again.

An entry is used only while the file's path, size and modification time (ns) are those it was made with.
SQLite (the standard library's) rather than a pickle: the file can be read by other tools and a damaged or
foreign cache is a clear warning and a fresh start, never code run from it. The cache is a single file for
every dataset, under $LUNGCT_CACHE_DIR (default ~/.cache/lungct), since shared datasets are often read-only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.data.image_info import THUMB_SIZE, ImageInfo

log = logging.getLogger("lungct")

CACHE_FILE = "scan.sqlite"
_SCHEMA_VERSION = 1
_COLUMNS = "sha256, width, height, mode, format, mean, std, thumb, reason"


@dataclass(frozen=True)
class FileKey:
    path: str
    size: int
    mtime_ns: int


def cache_dir() -> Path:
    return Path(os.environ.get("LUNGCT_CACHE_DIR") or Path.home() / ".cache" / "lungct").expanduser()


def file_key(path: str) -> FileKey | None:
    """The file's identity for the cache, or None when it cannot be stat-ed (the scan then reports why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileKey(path if os.path.isabs(path) else os.path.abspath(path), st.st_size, st.st_mtime_ns)


class ScanCache:
    """Entries: an ImageInfo for a readable image, or the reason an unreadable file was skipped."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / CACHE_FILE
        self.db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._open()
        except (OSError, sqlite3.Error) as exc:
            log.warning("scan cache %s is not usable (%s); scanning without it", self.path, exc)
            self.db = None

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:  # not a database, another schema, damaged
            log.warning("scan cache %s is damaged or foreign (%s); starting a new one", self.path, exc)
            self.path.unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        # Each row holds a 16 KB thumbnail: large pages keep it out of long overflow chains, and reading through
        # mmap avoids a copy; together about twice as fast to read back (page_size applies to a new file only).
        db.execute("PRAGMA page_size = 65536")
        db.execute("PRAGMA mmap_size = 4294967296")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            db.close()
            raise sqlite3.DatabaseError(f"schema version {version}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, "
            "width INTEGER, height INTEGER, mode TEXT, format TEXT, mean REAL, std REAL, thumb BLOB, reason TEXT)"
        )
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        db.commit()
        return db

    def lookup(self, keys: list[FileKey]) -> dict[str, ImageInfo | str]:
        """Cached results by path, for the keys whose size and mtime still match."""
        if self.db is None or not keys:
            return {}
        wanted = {k.path: k for k in keys}
        out: dict[str, ImageInfo | str] = {}
        paths = list(wanted)
        for start in range(0, len(paths), 900):  # SQLite's limit on bound parameters
            chunk = paths[start : start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT path, size, mtime_ns, {_COLUMNS} FROM files WHERE path IN ({marks})", chunk
            ).fetchall()
            for path, size, mtime_ns, *fields in rows:
                key = wanted[path]
                if (size, mtime_ns) == (key.size, key.mtime_ns):
                    result = _decode(fields)
                    if result is not None:
                        out[path] = result
        return out

    def store(self, entries: Iterable[tuple[FileKey, ImageInfo | str]]) -> None:
        if self.db is None:
            return
        rows = [(k.path, k.size, k.mtime_ns, *_encode(result)) for k, result in entries]
        try:
            self.db.executemany(
                f"INSERT OR REPLACE INTO files (path, size, mtime_ns, {_COLUMNS}) VALUES ({','.join('?' * 12)})", rows
            )
            self.db.commit()
        except sqlite3.Error as exc:  # a full disk, a read-only folder: the scan's results stand without it
            log.warning("scan cache %s could not be written (%s)", self.path, exc)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _encode(result: ImageInfo | str) -> tuple:
    if isinstance(result, str):
        return (None, None, None, None, None, None, None, None, result)
    thumb = np.ascontiguousarray(result.thumb, dtype=np.float32).tobytes()
    return (
        result.sha256,
        result.width,
        result.height,
        result.mode,
        result.format,
        result.mean,
        result.std,
        thumb,
        None,
    )


def _decode(fields: list) -> ImageInfo | str | None:
    sha256, width, height, mode, fmt, mean, std, thumb, reason = fields
    if reason is not None:
        return str(reason)
    if not isinstance(thumb, bytes) or len(thumb) != THUMB_SIZE * THUMB_SIZE * 4:
        return None  # a damaged row: scanned again
    return ImageInfo(
        sha256, width, height, mode, fmt, mean, std, np.frombuffer(thumb, dtype=np.float32)
    )  # read only, as its users treat it
