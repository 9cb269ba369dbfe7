"""Request batching: concurrent single-slice requests gathered into one model call, each answered with its own.

Each of `calls` threads owns one model call at a time. A thread takes the first waiting request, then keeps
taking requests that arrive within `max_wait_ms` of that first one (up to `max_batch`), runs them as one batch,
and hands each caller the result at its own position. A lone request therefore waits at most `max_wait_ms`;
under load, requests that queued while a batch ran are taken at once, without waiting. With more than one
thread, a batch runs while the next one gathers and runs beside it: a single-threaded model call (one core)
would otherwise leave the other cores idle while requests queue behind it. The caller gets a
concurrent.futures.Future, which an asyncio handler awaits without holding a worker thread (asyncio.wrap_future).

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

In = TypeVar("In")
Out = TypeVar("Out")
_STOP = object()


class MicroBatcher(Generic[In, Out]):
    """`submit(item)` -> Future of `fn([... item ...])[its index]`; `fn` must return one result per item, in order."""

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        max_batch: int = 16,
        max_wait_ms: float = 2.0,
        calls: int = 1,
    ):
        if max_batch < 1 or max_wait_ms < 0 or calls < 1:
            raise ValueError("max_batch and calls must be at least 1, max_wait_ms at least 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batches = 0  # counts, for /v1/model and the benchmark: items / batches is the mean batch size
        self.items = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._count = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"lungct-batcher-{i}", daemon=True) for i in range(calls)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, item: In) -> Future[Out]:
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

    def _gather(self, first: tuple[In, Future[Out]]) -> tuple[list[tuple[In, Future[Out]]], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.monotonic()
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            entry = self._queue.get()
            if entry is _STOP:
                break
            batch, stop = self._gather(entry)
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
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
