"""The prediction log: one SQLite row per served prediction, the input of drift reports.

What a row holds is chosen so that it can never carry a patient: a timestamp, the image's content hash,
the result, the model version, the latency, a few intensity statistics and the model's pooled embedding
(float16). Never the image, its file name or path, or any DICOM tag. SQLite from the standard library is
enough for one server process; WAL mode lets a drift report read while the server writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import ConfigDict, Field

from lungct.contracts import Prediction
from lungct.errors import LungCTError
from lungct.files import sqlite_tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,               -- ISO 8601, UTC
    sha256 TEXT NOT NULL,           -- of the uploaded bytes
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,       -- calibrated probability of `label`
    probabilities TEXT NOT NULL,    -- JSON {class: probability}
    latency_ms REAL NOT NULL,
    source TEXT NOT NULL,           -- api | app | cli
    stats TEXT NOT NULL,            -- JSON, see image_stats()
    embedding BLOB,                 -- float16 pooled backbone features, or NULL
    prediction_id TEXT,             -- random id handed to the client, for feedback (NULL in older logs)
    novelty REAL                    -- unlike the training images above 1 (lungct familiarity), or NULL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,               -- ISO 8601, UTC
    prediction_id TEXT NOT NULL,    -- predictions.prediction_id
    label TEXT NOT NULL,            -- the class the clinician says is right
    reason TEXT,                    -- free text, optional
    image TEXT                      -- the kept slice (--keep-feedback-images), or NULL: monitoring only
);
CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback (prediction_id);
"""
# added after the first release of the log: existing files gain the column on open
MIGRATIONS = {
    "prediction_id": "ALTER TABLE predictions ADD COLUMN prediction_id TEXT",
    "novelty": "ALTER TABLE predictions ADD COLUMN novelty REAL",
}
INDEXES = "CREATE UNIQUE INDEX IF NOT EXISTS predictions_prediction_id ON predictions (prediction_id)"
REASON_MAX = 500  # characters of a feedback reason that are kept


def _histogram_percentiles(counts: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """np.percentile's default (linear) percentiles of the values a histogram of levels 0..255 counts."""
    cumulative = np.cumsum(counts)
    out = []
    for q in qs:
        position = q / 100 * (cumulative[-1] - 1)
        low, high = int(np.floor(position)), int(np.ceil(position))
        # the level of the k-th smallest value (0-based) is the first level whose cumulative count exceeds k
        v_low, v_high = np.searchsorted(cumulative, [low + 1, high + 1])
        out.append(float(v_low + (v_high - v_low) * (position - low)))
    return out


def image_stats(img: Image.Image) -> dict[str, float]:
    """Intensity statistics of the decoded slice (grey levels 0-255) that drift reports compare.

    Computed from the 256-bin histogram, which holds everything these statistics need for 8-bit levels: the same
    values as np.mean/np.std/np.percentile (linear interpolation) on the pixels, in a tenth of the time, which
    matters because every served prediction pays for it.
    """
    grey = img if img.mode == "L" else img.convert("L")
    counts = np.asarray(grey.histogram(), dtype=np.float64)  # Pillow's C histogram: no 512 x 512 array in numpy
    levels = np.arange(256, dtype=np.float64)
    n = counts.sum()
    mean = float(counts @ levels / n)
    p5, p50, p95 = _histogram_percentiles(counts, (5, 50, 95))
    return {
        "mean": mean,
        "std": float(np.sqrt(counts @ (levels - mean) ** 2 / n)),
        "p5": p5,
        "p50": p50,
        "p95": p95,
        "width": float(img.width),
        "height": float(img.height),
    }


class PredictionRecord(Prediction):
    """One row of the log: a lungct.contracts.Prediction (its file name is never stored) plus what drift
    reports compare: the slice's intensity statistics, the pooled embedding, and where it was served from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sha256: str
    model_version: str
    latency_ms: float
    stats: dict[str, float]
    source: str = "api"  # api | app | cli
    embedding: np.ndarray | None = Field(default=None, repr=False, exclude=True)
    ts: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    @classmethod
    def of(
        cls, prediction: Prediction, stats: dict[str, float], embedding: np.ndarray | None, source: str
    ) -> PredictionRecord:
        """The log's record of a served prediction; its `name` (the client's file name) is dropped here."""
        fields = prediction.model_dump(by_alias=False, exclude={"name"})
        return cls(**fields, stats=stats, embedding=embedding, source=source)

    @property
    def confidence(self) -> float:
        return self.probability

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json", exclude={"name"})
        d["embedding"] = None if self.embedding is None else np.asarray(self.embedding, dtype=np.float32).tolist()
        return d


def _row(rec: PredictionRecord) -> tuple:
    emb = None if rec.embedding is None else np.asarray(rec.embedding, dtype="<f2").tobytes()
    return (
        rec.ts,
        rec.prediction_id,
        rec.sha256,
        rec.model_version,
        rec.predicted,
        rec.probability,
        json.dumps(rec.probabilities),
        float(rec.latency_ms),
        rec.source,
        json.dumps(rec.stats),
        emb,
        rec.novelty,
    )


SQLITE_MAX_INT = 2**63 - 1


def utc_timestamp(since: str | datetime) -> str:
    """`since` as the log stores times (ISO, UTC, milliseconds), so that comparing the strings compares the instants.

    The log's `ts` is text; a `since` compared as given made "garbage" select nothing (and silence --fail-on-drift)
    and read 10:00+05:00 as later than 06:00 UTC. A time without an offset is UTC, as the option's help says.
    """
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.strip())
        except ValueError:
            raise LungCTError(
                f"--since {since!r} is not an ISO date or time (e.g. 2026-12-01 or 2026-12-01T08:00:00+01:00)"
            ) from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.astimezone(UTC).isoformat(timespec="milliseconds")


class PredictionLog:
    """Append-only log; thread-safe, so API worker threads can share one instance.

    It is the prediction sink of lungct.inference.service (`image_stats` and `record`), plugged in by the API
    and the app: the inference layer sits below monitoring and cannot import this module.
    """

    image_stats = staticmethod(image_stats)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL's recommended setting: a commit no longer waits for an fsync (which, under the lock, queued every
            # served request behind the disk); the log survives a crash of the server intact, and only a power
            # loss can drop its last few rows (https://www.sqlite.org/pragma.html#pragma_synchronous).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(predictions)")}
            for column, statement in MIGRATIONS.items():
                if column not in columns:
                    self._db.execute(statement)
            self._db.execute(INDEXES)
        except (sqlite3.Error, OSError) as exc:
            raise LungCTError(f"cannot open the prediction log {self.path}: {exc}") from exc

    def record(
        self, prediction: Prediction, *, stats: dict[str, float], embedding: np.ndarray | None, source: str
    ) -> None:
        """Append a served prediction (never its file name) with the decoded slice's statistics and embedding."""
        self.append(PredictionRecord.of(prediction, stats, embedding, source))

    def record_many(
        self, predictions: list[tuple[Prediction, dict[str, float], np.ndarray | None]], *, source: str
    ) -> None:
        """`record` for each (prediction, stats, embedding) of one model batch, written in one transaction."""
        self.append(*(PredictionRecord.of(p, stats, emb, source) for p, stats, emb in predictions))

    def append(self, *records: PredictionRecord) -> None:
        """Write the records in one transaction: one WAL commit for a whole served batch, not one per row."""
        rows = [_row(rec) for rec in records]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO predictions (ts, prediction_id, sha256, model_version, label, confidence,"
                    " probabilities, latency_ms, source, stats, embedding, novelty)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read(self, since: str | None = None, model_version: str | None = None, limit: int | None = None) -> list[dict]:
        """Rows as dicts (newest last), optionally from ISO time `since` on and for one model version."""
        query, args = "SELECT * FROM predictions WHERE 1=1", []
        if since:
            query += " AND ts >= ?"
            args.append(utc_timestamp(since))
        if model_version:
            query += " AND model_version = ?"
            args.append(model_version)
        if limit:  # the newest `limit` rows, still returned oldest first
            query = f"SELECT * FROM ({query} ORDER BY id DESC LIMIT ?)"
            args.append(min(int(limit), SQLITE_MAX_INT))  # more rows than SQLite can count: all of them
        query += " ORDER BY id"
        with self._lock:
            cur = self._db.execute(query, args)
            names = [c[0] for c in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for r in rows:
            r["probabilities"] = json.loads(r["probabilities"])
            r["stats"] = json.loads(r["stats"])
            r["embedding"] = (
                None if r["embedding"] is None else np.frombuffer(r["embedding"], dtype="<f2").astype(np.float32)
            )
        return rows

    def prediction(self, prediction_id: str) -> dict | None:
        """The logged prediction with this id (sha256, label, model_version, ts), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT prediction_id, sha256, label, model_version, ts FROM predictions WHERE prediction_id = ?",
                (prediction_id,),
            ).fetchone()
        keys = ("prediction_id", "sha256", "label", "model_version", "ts")
        return None if row is None else dict(zip(keys, row, strict=True))

    def add_feedback(self, prediction_id: str, label: str, reason: str | None, image: str | None) -> int:
        """Record a clinician's label for a logged prediction; returns the feedback's id. The caller has checked
        that the prediction exists and the label is a class."""
        ts = datetime.now(UTC).isoformat(timespec="milliseconds")
        reason = reason[:REASON_MAX] if reason else None
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO feedback (ts, prediction_id, label, reason, image) VALUES (?, ?, ?, ?, ?)",
                (ts, prediction_id, label, reason, image),
            )
            return int(cur.lastrowid)

    def read_feedback(self) -> list[dict]:
        """Every prediction's latest feedback, joined with the prediction (oldest first): prediction_id, label
        (the clinician's), predicted, sha256, model_version, reason, image, ts."""
        query = """
            SELECT f.prediction_id, f.label, p.label, p.sha256, p.model_version, f.reason, f.image, f.ts
            FROM feedback f JOIN predictions p ON p.prediction_id = f.prediction_id
            WHERE f.id = (SELECT MAX(id) FROM feedback WHERE prediction_id = f.prediction_id)
            ORDER BY f.id"""
        keys = ("prediction_id", "label", "predicted", "sha256", "model_version", "reason", "image", "ts")
        with self._lock:
            return [dict(zip(keys, row, strict=True)) for row in self._db.execute(query).fetchall()]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_existing_log(path: str | Path) -> PredictionLog:
    """For readers (drift): a clear error rather than silently creating an empty log at a mistyped path."""
    p = Path(path)
    if not p.is_file():
        raise LungCTError(f"prediction log not found: {p}")
    try:
        with p.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise LungCTError(f"cannot read the prediction log {p}: {exc}") from exc
    if header != b"SQLite format 3\x00":
        raise LungCTError(f"{p} is not a lungct prediction log (not an SQLite database)")
    try:  # read-only: another program's database must not get lungct's tables written into it
        tables = sqlite_tables(p)
    except sqlite3.Error as exc:
        raise LungCTError(f"cannot open the prediction log {p}: {exc}") from exc
    if "predictions" not in tables:
        raise LungCTError(f"{p} is not a lungct prediction log (an SQLite database without its predictions table)")
    return PredictionLog(p)
