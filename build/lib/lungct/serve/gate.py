"""Explanations on their own bounded set of daemon threads, with a bounded wait queue and a time limit.

A CAM explanation can take minutes on a CPU (scorecam: about 170 s for one slice), so explanations must never
hold the prediction workers: they run here, beside the prediction limiter, never inside it.

- At most `concurrency` explanations run at once; at most `queue` more wait for a slot. Past that the request
  is refused at once with 503 and a Retry-After header (`explain_busy`), rather than piling up.
- Each request has `timeout_s` in all (waiting plus working). Past it the client gets 504 (`explain_timeout`);
  a thread that was already working finishes in the background and keeps its slot until it does, so the
  number of threads at work never exceeds `concurrency`.
- The threads are daemon threads: shutting the server down never waits for an explanation (an executor's
  worker threads would be joined at interpreter exit, which is what made SIGTERM hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from lungct.serve.errors import ApiError


class ExplainGate:
    """Create it inside the running event loop (the app's lifespan): its semaphore belongs to that loop."""

    def __init__(self, concurrency: int, queue: int, timeout_s: float, retry_after_s: int = 5):
        self.concurrency = concurrency
        self.queue = queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.running = 0  # threads at work, including those whose request has already timed out
        self.waiting = 0  # requests waiting for a slot
        self._slots = asyncio.Semaphore(concurrency)

    def busy(self) -> bool:
        """True when a new request could neither start now nor wait in the queue."""
        return self.running + self.waiting >= self.concurrency + self.queue

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on a daemon thread; ApiError 503 when the queue is full, 504 past the time limit."""
        if self.busy():
            raise ApiError(
                503,
                "explain_busy",
                f"{self.running} explanations are running and {self.waiting} waiting, the most this server "
                f"accepts; try again later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise self._timeout("waiting for a free explanation slot") from None
        finally:
            self.waiting -= 1
        done: asyncio.Future = loop.create_future()

        def finish(outcome: tuple[bool, Any]) -> None:  # on the event loop
            self.running -= 1
            self._slots.release()
            if not done.done():
                done.set_result(outcome)

        def work() -> None:  # on the daemon thread
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # handed to the request, which re-raises it (or has gone)
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # a closed loop: the server shut down while this thread worked
                loop.call_soon_threadsafe(finish, outcome)

        self.running += 1
        try:
            threading.Thread(target=work, name="lungct-explain", daemon=True).start()
        except BaseException:
            self.running -= 1
            self._slots.release()
            raise
        try:
            async with asyncio.timeout_at(deadline):
                ok, value = await asyncio.shield(done)
        except TimeoutError:
            raise self._timeout("explaining") from None
        if not ok:
            raise value
        return value

    def _timeout(self, doing: str) -> ApiError:
        limit = f"{self.timeout_s:g}"
        return ApiError(
            504,
            "explain_timeout",
            f"the explanation took longer than the {limit} s limit (explain_timeout_s) while {doing}; "
            "try a faster method (gradcam) or later",
        )
