"""Request batching: concurrent single-slice requests gathered into one model call, each answered with its own.

Each of `calls` threads owns one model call at a time. A thread takes the first waiting request, then keeps
taking requests that arrive within `max_wait_ms` of that first one (up to `max_batch`), runs them as one batch,
and hands each caller the result at its own position. A lone request therefore waits at most `max_wait_ms`;
under load, requests that queued while a batch ran are taken at once, without waiting. With more than one
thread, a batch runs while the next one gathers and runs beside it: a single-threaded model call (one core)
would otherwise leave the other cores idle while requests queue behind it. The caller gets a
concurrent.futures.Future, which an asyncio handler awaits without holding a worker thread (asyncio.wrap_future).

With `prepare`, callers submit raw work (an upload's bytes) and the call thread prepares each item (decodes it) as
it takes it off the queue, while the batch gathers: a request then crosses threads twice (event loop -> call
thread -> event loop) instead of four times through a separate decoding pool, and the CPU-bound threads are the
call threads alone. An item whose preparation raises gets that exception and leaves the batch; the others run.

Written here because neither ONNX Runtime nor FastAPI batches requests, and the serving frameworks that do
(Triton, TorchServe, Ray Serve) are servers of their own rather than a library this one can call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger("lungct.inference")

Raw = TypeVar("Raw")
In = TypeVar("In")
Out = TypeVar("Out")
_STOP = object()


class MicroBatcher(Generic[Raw, In, Out]):
    """`submit(raw)` -> Future of `fn([... prepare(raw) ...])[its index]`; `fn` must return one result per item, in
    order. Without `prepare`, items go to `fn` as submitted."""

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        max_batch: int = 16,
        max_wait_ms: float = 2.0,
        calls: int = 1,
        prepare: Callable[[Raw], In] | None = None,
    ):
        if max_batch < 1 or max_wait_ms < 0 or calls < 1:
            raise ValueError("max_batch and calls must be at least 1, max_wait_ms at least 0")
        self.fn = fn
        self.prepare = prepare
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batches = 0  # counts, for /v1/model and the benchmark: items / batches is the mean batch size
        self.items = 0
        # queue.Queue, not SimpleQueue: on CPython 3.11 SimpleQueue.get(timeout=...) can block for ever when another
        # call thread takes the item it was woken for after its deadline passed (it retries with a negative timeout,
        # which means no timeout), leaving a request unanswered (tests/inference/test_batching.py races for it).
        self._queue: queue.Queue[Any] = queue.Queue()
        self._count = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"lungct-batcher-{i}", daemon=True) for i in range(calls)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, item: Raw) -> Future[Out]:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future[Out] = Future()
        self._queue.put((item, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the threads."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self, entry: tuple[Raw, Future[Out]]) -> tuple[In, Future[Out]] | None:
        """The entry ready for the model, or None when its caller gave up or its preparation failed (the caller
        then holds the exception)."""
        item, future = entry
        if not future.set_running_or_notify_cancel():
            return None
        if self.prepare is None:
            return entry  # type: ignore[return-value]  # without prepare, Raw is In
        try:
            return self.prepare(item), future
        except BaseException as exc:  # this caller's problem (a bad upload), not the batch's
            future.set_exception(exc)
            return None

    def _gather(self, first: tuple[Raw, Future[Out]]) -> tuple[list[tuple[In, Future[Out]]], bool]:
        # The window opens when the first request is taken: time spent preparing counts towards it, so a batch
        # waits only while nothing else can be done.
        deadline = time.monotonic() + self.max_wait_s
        taken = self._take(first)
        batch, stop = ([taken] if taken else []), False
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.monotonic()
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
                break
            taken = self._take(entry)
            if taken:
                batch.append(taken)
        return batch, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            entry = self._queue.get()
            if entry is _STOP:
                break
            live, stop = self._gather(entry)
            if not live:
                continue
            try:
                results = self.fn([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batched call returned {len(results)} results for {len(live)} items")
            except BaseException as exc:  # every caller of this batch learns of the failure; the loop goes on
                log.exception("batched model call failed")
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            with self._count:
                self.batches += 1
                self.items += len(live)
            for (_, fut), result in zip(live, results, strict=True):
                fut.set_result(result)
