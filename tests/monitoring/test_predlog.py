"""The prediction log records lungct.contracts.Prediction: the same columns as ever, never the file name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lungct.contracts import Prediction
from lungct.monitoring.predlog import PredictionLog, PredictionRecord, image_stats

COLUMNS = {"id", "ts", "sha256", "model_version", "label", "confidence", "probabilities", "latency_ms", "source"}
COLUMNS |= {"stats", "embedding", "prediction_id", "novelty"}


def test_a_log_from_before_feedback_gains_the_prediction_id_column_and_keeps_its_rows(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema as it was before prediction ids
        db.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " model_version TEXT NOT NULL, label TEXT NOT NULL, confidence REAL NOT NULL, probabilities TEXT NOT NULL,"
            " latency_ms REAL NOT NULL, source TEXT NOT NULL, stats TEXT NOT NULL, embedding BLOB)"
        )
        db.execute(
            "INSERT INTO predictions (ts, sha256, model_version, label, confidence, probabilities, latency_ms, source,"
            " stats) VALUES ('2026-01-01T00:00:00', 'aa', 'v1', 'normal', 0.9, '{\"normal\": 0.9}', 3.0, 'api', '{}')"
        )
    log = PredictionLog(path)
    (old,) = log.read()
    assert old["prediction_id"] is None and old["novelty"] is None and old["label"] == "normal"
    assert log.prediction("anything") is None and log.read_feedback() == []
    log.close()


def test_a_prediction_is_logged_without_its_file_name(tmp_path):
    prediction = Prediction.from_probabilities(
        ["benign", "malignant", "normal"],
        np.array([0.1, 0.7, 0.2], dtype=np.float32),
        name="Doe_Jane_MRN4711.png",
        sha256="ab" * 32,
        latency_ms=12.5,
        model_version="run-x-123",
        backend="onnx",
    )
    log = PredictionLog(tmp_path / "log.sqlite")
    log.record(prediction, stats={"mean": 1.0}, embedding=np.ones(4, dtype=np.float32), source="app")
    (row,) = log.read()
    log.close()
    assert set(row) == COLUMNS
    assert (row["label"], row["confidence"], row["source"]) == ("malignant", 0.7, "app")
    assert row["probabilities"] == {"benign": 0.1, "malignant": 0.7, "normal": 0.2}
    assert row["embedding"].tolist() == [1.0] * 4
    assert "Doe" not in json.dumps({k: v for k, v in row.items() if k != "embedding"})
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("log.sqlite*"))
    assert b"Doe_Jane" not in stored


def _prediction(i: int, prediction_id: str) -> Prediction:
    probs = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    return Prediction.from_probabilities(
        ["benign", "malignant", "normal"],
        probs,
        name=f"s{i}.png",
        sha256=f"{i:064x}",
        latency_ms=1.0,
        model_version="v",
        backend="onnx",
        prediction_id=prediction_id,
    )


def test_a_served_batch_is_logged_in_one_transaction_all_rows_or_none(tmp_path):
    log = PredictionLog(tmp_path / "log.sqlite")
    batch = [(_prediction(i, f"id{i}"), {"mean": float(i)}, np.full(4, i, np.float32)) for i in range(3)]
    log.record_many(batch, source="api")
    assert [(r["prediction_id"], r["stats"]["mean"], r["embedding"][0]) for r in log.read()] == [
        ("id0", 0.0, 0.0),
        ("id1", 1.0, 1.0),
        ("id2", 2.0, 2.0),
    ]
    clash = [(_prediction(3, "id3"), {}, None), (_prediction(4, "id1"), {}, None)]  # id1 is taken: the batch fails
    with pytest.raises(Exception, match="UNIQUE"):
        log.record_many(clash, source="api")
    assert [r["prediction_id"] for r in log.read()] == ["id0", "id1", "id2"]  # id3 was rolled back with it
    log.record_many([(_prediction(5, "id5"), {}, None)], source="api")  # and the log takes the next batch
    log.record_many([], source="api")
    assert [r["prediction_id"] for r in log.read()] == ["id0", "id1", "id2", "id5"]
    log.close()


def test_records_are_predictions_and_still_take_the_log_spelling():
    rec = PredictionRecord(
        sha256="s", model_version="v", label="a", probabilities={"a": 0.6, "b": 0.4}, latency_ms=1.0, stats={}
    )
    assert isinstance(rec, Prediction) and rec.predicted == "a" and rec.confidence == 0.6
    assert rec.model_dump()["label"] == "a" and "embedding" not in rec.model_dump()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_stats_equal_numpy_on_the_pixels(mode):
    """The histogram shortcut gives np.mean, np.std and np.percentile (linear) of the grey levels exactly."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8)
    img = Image.fromarray(pixels if mode == "RGB" else pixels[..., 0], mode)
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    stats = image_stats(img)
    assert stats["mean"] == pytest.approx(grey.mean(), abs=1e-9)
    assert stats["std"] == pytest.approx(grey.std(), abs=1e-9)
    for q in (5, 50, 95):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(grey, q), abs=1e-9)
    assert (stats["width"], stats["height"]) == (131.0, 97.0)


def test_another_programs_sqlite_database_is_refused_and_left_untouched(tmp_path):
    """`lungct drift --log other.db` used to write lungct's tables into it and report 'not enough data'."""
    import sqlite3

    from lungct.errors import LungCTError
    from lungct.monitoring.predlog import open_existing_log

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
    before = other.read_bytes()
    with pytest.raises(LungCTError, match=r"other\.db is not a lungct prediction log \(an SQLite database without"):
        open_existing_log(other)
    assert other.read_bytes() == before
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(LungCTError, match=r"cannot open the prediction log .*damaged\.db"):
        open_existing_log(damaged)
    PredictionLog(tmp_path / "served.sqlite").close()  # a log the server made, with no rows yet, still opens
    assert len(open_existing_log(tmp_path / "served.sqlite")) == 0


def test_since_is_read_as_an_instant_and_nonsense_is_refused(tmp_path):
    """`since` used to be compared as text: "garbage" selected nothing (and silenced --fail-on-drift), and a time
    with another offset than UTC selected the wrong rows."""
    from lungct.errors import LungCTError

    log = PredictionLog(tmp_path / "log.sqlite")
    for hour in (5, 6, 7):
        log.append(
            PredictionRecord(
                ts=f"2026-12-05T0{hour}:00:00.000+00:00",
                sha256="ab" * 32,
                model_version="v1",
                label="normal",
                probabilities={"normal": 0.9, "benign": 0.1},
                latency_ms=1.0,
                stats={},
                source="api",
            )
        )

    def hours(rows: list[dict]) -> list[str]:
        return [r["ts"][11:13] for r in rows]

    assert hours(log.read(since="2026-12-05T10:30:00+05:00")) == ["06", "07"]  # 05:30 UTC
    assert hours(log.read(since="2026-12-05T06:00:00Z")) == ["06", "07"]
    assert hours(log.read(since="2026-12-05T06:00")) == ["06", "07"]  # no offset: UTC
    assert hours(log.read(since="2026-12-05")) == ["05", "06", "07"]
    assert hours(log.read(limit=10**20)) == ["05", "06", "07"]  # more than SQLite can count: every row
    for bad in ("garbage", "2020-13-45T99:99", "05/12/2025"):
        with pytest.raises(LungCTError, match=f"--since '{bad}' is not an ISO date or time"):
            log.read(since=bad)
    log.close()
