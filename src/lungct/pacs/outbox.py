"""The outgoing queue: result objects wait on disk until their destination has taken them.

A destination that is down loses nothing: each object is a file in `items/` with a small JSON record
(destination, attempts, when to try next) written after it, each by an atomic rename, so an item exists
exactly when its record does, across crashes and restarts. A failed delivery is retried with exponential
backoff (retry_initial, doubling up to retry_max seconds), for as long as it takes; a destination that refuses
an object outright (a DICOM failure status other than "out of resources", an HTTP 4xx) moves it to `failed/`,
since sending it again would be refused again. A delivered item's record is removed first, then its file;
`sent.jsonl` journals each delivery by key. The queue holds at most `max_bytes`.

None twice: a delivery is forgotten only after the destination confirmed it, and an object that is sent again
after a crash between the two carries the same SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lungct.errors import LungCTError
from lungct.files import atomic_write


class QueueFull(LungCTError):
    """The outgoing queue has no room for more results until deliveries free it."""


@dataclass
class Item:
    key: str
    destination: str  # "cstore:HOST:PORT:AET" or "stow:URL" (send.py reads it)
    size: int
    created: float
    attempts: int = 0
    next_try: float = 0.0  # epoch seconds
    last_error: str = ""


class Outbox:
    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        retry_initial: float = 2.0,
        retry_max: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        self.root = Path(root)
        self.items, self.failed = self.root / "items", self.root / "failed"
        for folder in (self.root, self.items, self.failed):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.journal = self.root / "sent.jsonl"
        self.max_bytes = max_bytes
        self.retry_initial, self.retry_max = retry_initial, max(retry_max, retry_initial)
        self.clock = clock
        self._lock = threading.Lock()
        for orphan in self.items.glob("*.dcm"):  # a crash between writing the object and its record
            if not orphan.with_suffix(".json").exists():
                orphan.unlink(missing_ok=True)

    @staticmethod
    def key(destination: str, sop_instance_uid: str) -> str:
        """One item per object and destination: queueing the same object again replaces it."""
        return hashlib.sha256(f"{destination}\n{sop_instance_uid}".encode()).hexdigest()[:24]

    def path(self, item: Item) -> Path:
        return self.items / f"{item.key}.dcm"

    def _record(self, key: str) -> Path:
        return self.items / f"{key}.json"

    def pending(self) -> list[Item]:
        """Every queued item, oldest first."""
        out = []
        for record in self.items.glob("*.json"):
            try:
                out.append(Item(**json.loads(record.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue  # removed while we read, or damaged: not an item
        return sorted(out, key=lambda i: (i.created, i.key))

    def used_bytes(self) -> int:
        return sum(i.size for i in self.pending())

    def has_room(self, n_bytes: int) -> bool:
        return self.used_bytes() + n_bytes <= self.max_bytes

    def put(self, data: bytes, destination: str, sop_instance_uid: str) -> Item:
        """Queue one encoded object for a destination; QueueFull when it would pass the limit."""
        key = self.key(destination, sop_instance_uid)
        with self._lock:
            if not self.has_room(len(data)):
                raise QueueFull(f"the outgoing queue is full ({self.max_bytes // 2**20} MiB)")
            item = Item(key, destination, len(data), self.clock())
            atomic_write(self.items / f"{key}.dcm", data)
            atomic_write(self._record(key), json.dumps(asdict(item)).encode())
        return item

    def due(self) -> list[Item]:
        now = self.clock()
        return [i for i in self.pending() if i.next_try <= now]

    def next_due_in(self) -> float | None:
        """Seconds until the next item is due (0 when one is), None when the queue is empty."""
        items = self.pending()
        return None if not items else max(0.0, min(i.next_try for i in items) - self.clock())

    def delivered(self, item: Item) -> None:
        """Forget a confirmed delivery: journal it, then remove the record, then the file."""
        with self._lock:
            with self.journal.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"ts": round(self.clock(), 3), "key": item.key, "attempts": item.attempts + 1}))
                fh.write("\n")
            self._record(item.key).unlink(missing_ok=True)
            self.path(item).unlink(missing_ok=True)

    def retry_later(self, item: Item, error: str) -> float:
        """Count a failed attempt and schedule the next one; returns the delay in seconds."""
        item.attempts += 1
        delay = min(self.retry_max, self.retry_initial * 2 ** (item.attempts - 1))
        item.next_try, item.last_error = self.clock() + delay, error[:200]
        with self._lock:
            if self._record(item.key).exists():
                atomic_write(self._record(item.key), json.dumps(asdict(item)).encode())
        return delay

    def give_up(self, item: Item, error: str) -> None:
        """The destination refused the object for good: keep it in failed/ for a person to look at."""
        item.attempts += 1
        item.last_error = error[:200]
        with self._lock:
            os.replace(self.path(item), self.failed / f"{item.key}.dcm")
            atomic_write(self.failed / f"{item.key}.json", json.dumps(asdict(item)).encode())
            self._record(item.key).unlink(missing_ok=True)

    def sent_keys(self) -> list[str]:
        """Keys of every journalled delivery, in order (a key twice would be a repeated delivery)."""
        if not self.journal.is_file():
            return []
        return [
            json.loads(line)["key"] for line in self.journal.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
