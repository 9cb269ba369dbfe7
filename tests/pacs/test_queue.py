"""The on-disk outgoing queue and the spool without a network: backoff, persistence across reopening, size
limits, what a delivery outcome does to an item, and when a series counts as quiet."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lungct.errors import LungCTError
from lungct.pacs import pipeline as pipeline_module
from lungct.pacs.listener import Listener
from lungct.pacs.outbox import Outbox, QueueFull
from lungct.pacs.pipeline import Pipeline
from lungct.pacs.send import Outcome, Result
from lungct.pacs.spool import Spool, SpoolFull

DEST = "cstore:127.0.0.1:4242:PACS"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_and_survives_reopening(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "q", max_bytes=10_000, retry_initial=1.0, retry_max=5.0, clock=clock)
    item = box.put(b"x" * 100, DEST, "1.2.3")
    assert [i.key for i in box.due()] == [item.key]
    delays = [box.retry_later(item, "association rejected") for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert box.due() == [] and box.next_due_in() == pytest.approx(5.0)

    again = Outbox(tmp_path / "q", max_bytes=10_000, clock=clock)  # a restart: the record is on disk
    (reopened,) = again.pending()
    assert (reopened.attempts, reopened.last_error, reopened.size) == (5, "association rejected", 100)
    assert again.path(reopened).read_bytes() == b"x" * 100
    clock.now += 5.0
    assert [i.key for i in again.due()] == [item.key]


def test_the_same_object_is_queued_once_and_delivery_forgets_it(tmp_path):
    box = Outbox(tmp_path / "q", max_bytes=10_000)
    first = box.put(b"a" * 10, DEST, "1.2.3")
    box.put(b"b" * 10, DEST, "1.2.3")  # analysed again after a crash: same UID, same item
    other = box.put(b"c" * 10, "stow:http://x/dicom-web", "1.2.3")  # another destination: another item
    assert len(box.pending()) == 2 and box.path(first).read_bytes() == b"b" * 10
    box.delivered(first)
    assert [i.key for i in box.pending()] == [other.key]
    assert not box.path(first).exists() and box.sent_keys() == [first.key]


def test_queue_limit_and_refused_items(tmp_path):
    box = Outbox(tmp_path / "q", max_bytes=250)
    kept = box.put(b"x" * 200, DEST, "1.1")
    with pytest.raises(QueueFull):
        box.put(b"y" * 100, DEST, "1.2")
    assert not box.has_room(51) and box.has_room(50)
    box.give_up(kept, "status 0xA900")
    assert box.pending() == [] and box.has_room(250)
    record = json.loads((box.failed / f"{kept.key}.json").read_text())
    assert record["last_error"] == "status 0xA900" and (box.failed / f"{kept.key}.dcm").read_bytes() == b"x" * 200


def test_an_object_without_its_record_is_not_an_item(tmp_path):
    box = Outbox(tmp_path / "q", max_bytes=10_000)
    (box.items / "deadbeef.dcm").write_bytes(b"half")  # a crash between the object and its record
    assert Outbox(tmp_path / "q", max_bytes=10_000).pending() == []
    assert not (box.items / "deadbeef.dcm").exists()


def test_spool_limit_replacement_and_claim(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=300)
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0  # instances carry the patient module: owner only
    path = spool.store("1.2.840.1", "1.2.840.1.1", "1.2.840.1.1.1", b"a" * 100)
    assert "1.2.840" not in str(path.relative_to(tmp_path))  # names are hashes, not UIDs
    spool.store("1.2.840.1", "1.2.840.1.1", "1.2.840.1.1.1", b"b" * 150)  # the same instance again
    assert spool.used_bytes == 150
    spool.store("1.2.840.1", "1.2.840.1.1", "1.2.840.1.1.2", b"c" * 150)
    with pytest.raises(SpoolFull):
        spool.store("1.2.840.1", "1.2.840.1.1", "1.2.840.1.1.3", b"d")
    (series,) = spool.pending()
    work = spool.claim(series)
    assert spool.pending() == [] and spool.claimed() == [work] and len(list(work.glob("*.dcm"))) == 2
    assert Spool(tmp_path / "spool", max_bytes=300).used_bytes == 300  # counted again after a restart
    spool.release(work)
    assert spool.claimed() == [] and spool.used_bytes == 0


def _fake_pipeline(spool: Spool, processed: list[Path]):
    def process(work_dir: Path) -> bool:
        processed.append(work_dir)
        spool.release(work_dir)
        return True

    return SimpleNamespace(stuck=set(), process=process, drain=lambda: 0, analyzer=SimpleNamespace(loaded=False))


def test_a_series_is_analysed_once_it_is_quiet(tmp_path):
    spool, processed = Spool(tmp_path / "spool", max_bytes=10_000), []
    listener = Listener(_fake_pipeline(spool, processed), spool, "LUNGCT", 0, series_timeout=0.4)
    spool.store("1.1", "1.1.1", "1.1.1.1", b"a")
    listener.step()
    assert processed == []  # still receiving
    time.sleep(0.25)
    spool.store("1.1", "1.1.1", "1.1.1.2", b"b")  # a new instance restarts the quiet time
    time.sleep(0.25)
    listener.step()
    assert processed == []
    time.sleep(0.2)
    listener.step()
    assert len(processed) == 1 and not spool.pending()


def test_a_trigger_analyses_at_once_and_leftovers_come_first(tmp_path):
    spool, processed = Spool(tmp_path / "spool", max_bytes=10_000), []
    spool.store("1.1", "1.1.1", "1.1.1.1", b"a")
    leftover = spool.claim(spool.pending()[0])  # a crash left it in work/
    spool.store("2.1", "2.1.1", "2.1.1.1", b"b")
    listener = Listener(_fake_pipeline(spool, processed), spool, "LUNGCT", 0, series_timeout=600)
    listener.trigger.set()
    listener.step()
    assert processed[0] == leftover and len(processed) == 2


def test_a_run_that_cannot_load_stops_the_listener_with_its_reason(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10_000)

    def process(work_dir: Path) -> bool:
        raise LungCTError("model.safetensors is damaged or truncated and cannot be read")

    pipe = SimpleNamespace(stuck=set(), process=process, drain=lambda: 0, analyzer=SimpleNamespace(loaded=False))
    listener = Listener(pipe, spool, "LUNGCT", 0, series_timeout=0)
    spool.store("1.1", "1.1.1", "1.1.1.1", b"a")
    listener._work()  # returns instead of looping: the command then ends with this one line
    assert listener.stopping.is_set() and "damaged" in listener.fatal
    assert len(spool.claimed()) == 1  # the series is kept for a start with a working run


def test_drain_retries_keeps_and_refuses_by_outcome(tmp_path, monkeypatch):
    clock = Clock()
    box = Outbox(tmp_path / "q", max_bytes=10_000, retry_initial=1.0, clock=clock)
    ok, later, bad = (box.put(b"x", DEST, uid) for uid in ("1.1", "1.2", "1.3"))
    calls = []

    def deliver(destination, files, calling, tls=None):
        calls.append((destination, [f.name for f in files]))
        outcome = {ok.key: Outcome.SENT, later.key: Outcome.RETRY, bad.key: Outcome.REFUSED}
        return [Result(outcome[f.stem], "test") for f in files]

    monkeypatch.setattr(pipeline_module, "deliver", deliver)
    pipe = Pipeline(SimpleNamespace(), SimpleNamespace(), box, [DEST])
    assert pipe.drain() == 1
    assert len(calls) == 1 and calls[0][0] == DEST  # one association for the three
    assert [i.key for i in box.pending()] == [later.key] and box.pending()[0].attempts == 1
    assert (box.failed / f"{bad.key}.dcm").exists() and box.sent_keys() == [ok.key]
    assert pipe.drain() == 0 and len(calls) == 1  # not due yet: no attempt

    def broken(*_):
        raise ConnectionResetError

    monkeypatch.setattr(pipeline_module, "deliver", broken)
    clock.now += 1.0
    assert pipe.drain() == 0 and box.pending()[0].attempts == 2  # an exception on the way is a retry
