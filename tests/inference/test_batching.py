"""MicroBatcher: concurrent submissions share calls, and each caller gets the result of its own item."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lungct.inference.batching import MicroBatcher


@pytest.mark.parametrize("calls", [1, 2])
def test_each_caller_gets_its_own_result_under_concurrent_load(calls):
    sizes: list[int] = []

    def model(items):  # a slow "model" whose answer identifies its input: the row sum and the row itself
        sizes.append(len(items))
        time.sleep(0.005)
        batch = np.stack(items)
        return list(zip(batch.sum(axis=1), batch, strict=True))

    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=5, calls=calls)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=16) for _ in range(200)]
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda x: batcher.submit(x).result(timeout=30), inputs))
    finally:
        batcher.close()
    for x, (total, row) in zip(inputs, results, strict=True):
        assert np.array_equal(row, x) and total == pytest.approx(x.sum())
    assert sum(sizes) == 200 and max(sizes) <= 8
    assert max(sizes) > 1 and batcher.batches < 200  # requests did share calls
    assert batcher.items == 200 and batcher.batches == len(sizes)


def test_a_lone_request_is_answered_in_a_batch_of_one():
    sizes: list[int] = []
    batcher = MicroBatcher(lambda items: sizes.append(len(items)) or [i * 2 for i in items], 16, 1.0)
    try:
        assert batcher.submit(21).result(timeout=10) == 42
    finally:
        batcher.close()
    assert sizes == [1]


def test_a_failing_call_fails_every_request_of_its_batch_and_the_batcher_goes_on():
    gate = threading.Event()

    def model(items):
        gate.wait(10)
        if any(i < 0 for i in items):
            raise ValueError("bad item")
        return items

    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=50)
    try:
        bad, good = batcher.submit(-1), batcher.submit(2)  # both join one batch while the gate is shut
        gate.set()
        with pytest.raises(ValueError, match="bad item"):
            bad.result(timeout=10)
        with pytest.raises(ValueError, match="bad item"):
            good.result(timeout=10)
        assert batcher.submit(3).result(timeout=10) == 3
    finally:
        batcher.close()


def test_a_call_returning_the_wrong_number_of_results_is_an_error_not_a_mix_up():
    batcher = MicroBatcher(lambda items: items[:-1], max_batch=4, max_wait_ms=1)
    try:
        with pytest.raises(RuntimeError, match="results for"):
            batcher.submit(1).result(timeout=10)
    finally:
        batcher.close()


def test_closing_answers_what_is_queued_and_refuses_new_work():
    batcher = MicroBatcher(lambda items: items, max_batch=2, max_wait_ms=0)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=10) for f in futures] == list(range(5))
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(9)


def test_two_calls_run_at_once_when_two_threads_own_the_model():
    both_in = threading.Barrier(2, timeout=10)  # broken (and the test failed) unless two calls overlap

    def model(items):
        both_in.wait()
        return [i + 100 for i in items]

    batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0, calls=2)
    try:
        first, second = batcher.submit(1), batcher.submit(2)
        assert (first.result(timeout=20), second.result(timeout=20)) == (101, 102)
    finally:
        batcher.close()


def test_closing_several_call_threads_answers_the_queue_and_stops_every_thread():
    batcher = MicroBatcher(lambda items: [i * 3 for i in items], max_batch=2, max_wait_ms=1, calls=3)
    futures = [batcher.submit(i) for i in range(11)]
    batcher.close()
    assert [f.result(timeout=10) for f in futures] == [i * 3 for i in range(11)]
    assert not any(t.is_alive() for t in batcher._threads)
    assert batcher.items == 11


def test_a_batcher_needs_at_least_one_call_thread():
    with pytest.raises(ValueError, match="calls"):
        MicroBatcher(lambda items: items, calls=0)


def test_prepared_items_reach_the_model_and_each_caller_gets_the_answer_for_its_own_raw_item():
    prepared_on: set[str] = set()

    def prepare(raw: str) -> int:  # "decoding": on a call thread, never the submitting one
        prepared_on.add(threading.current_thread().name)
        return int(raw)

    batcher = MicroBatcher(lambda items: [i * 10 for i in items], max_batch=8, max_wait_ms=5, calls=2, prepare=prepare)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: batcher.submit(str(i)).result(timeout=30), range(100)))
    finally:
        batcher.close()
    assert results == [i * 10 for i in range(100)]
    assert prepared_on and all(name.startswith("lungct-batcher-") for name in prepared_on)


def test_an_item_that_fails_to_prepare_fails_alone_and_its_batch_still_runs():
    gate = threading.Event()
    batches: list[list[int]] = []

    def model(items):
        batches.append(list(items))
        return [i + 1 for i in items]

    def prepare(raw):
        gate.wait(10)  # the three submissions queue up behind the first preparation, so they share one batch
        if raw == "bad":
            raise ValueError("not a number: 'bad'")
        return int(raw)

    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=200, prepare=prepare)
    try:
        first, bad, last = batcher.submit("1"), batcher.submit("bad"), batcher.submit("3")
        gate.set()
        assert first.result(timeout=10) == 2 and last.result(timeout=10) == 4
        with pytest.raises(ValueError, match="not a number"):
            bad.result(timeout=10)
    finally:
        batcher.close()
    assert batches == [[1, 3]]
    assert batcher.items == 2


def test_a_cancelled_request_is_not_prepared():
    gate = threading.Event()
    prepared: list[str] = []

    def prepare(raw):
        gate.wait(10)
        prepared.append(raw)
        return raw

    batcher = MicroBatcher(lambda items: items, max_batch=4, max_wait_ms=200, prepare=prepare)
    try:
        first, gone = batcher.submit("a"), batcher.submit("b")
        assert gone.cancel()  # the client left while the first upload was being decoded
        gate.set()
        assert first.result(timeout=10) == "a"
    finally:
        batcher.close()
    assert prepared == ["a"]


def test_no_request_is_lost_when_call_threads_race_for_a_burst():
    """CPython 3.11's queue.SimpleQueue.get(timeout=...) can block for ever when another consumer takes the item it
    was woken for after its deadline passed (it then waits with a negative timeout). With several call threads and a
    burst spread over the start-up of its senders, about a third of fresh batchers left a request unanswered;
    40 of them in a row all answer every request only if no consumer can block that way."""
    for trial in range(40):
        batcher = MicroBatcher(lambda items: list(items), max_batch=4, max_wait_ms=0.5, calls=4, prepare=lambda x: x)
        with ThreadPoolExecutor(16) as senders:  # fresh threads: the submits spread over their start-up
            futures = list(senders.map(batcher.submit, range(32)))
        try:
            assert [f.result(timeout=30) for f in futures] == list(range(32)), f"trial {trial}"
        finally:
            batcher.close()
