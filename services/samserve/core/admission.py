"""Admission control: bounded concurrency and a bounded queue, refusing fast past them.

A :class:`Lane` guards one kind of work (the decoder's prompt decodes, its segment-everything
runs, the embedding service's encoder runs, image decodes). At most ``slots`` jobs run at once;
others wait in FIFO order while the *cost* waiting (e.g. prompts, not calls) stays within
``max_queued`` and its expected wait (queued cost x a moving average of one unit's time /
``slots``) within ``max_wait``. Past either, a job is refused with :class:`Overloaded`, which
carries how long to wait before trying again; the RPC layer sends it as RESOURCE_EXHAUSTED with
gRPC's ``grpc-retry-pushback-ms``. Bounding the expected wait is what keeps admitted latency
close to the quiet latency under any load, on any machine. A job that finds the queue full
waits up to ``overflow_wait`` for room before it is refused (see :meth:`Lane._make_room`). A
waiter whose caller leaves (cancellation, deadline) leaves the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from samserve.core.errors import ResourceExhausted
from samserve.core.metrics import Metrics

#: Bounds of the retry hint given with a refusal, seconds.
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 5.0
#: Most jobs waiting for room in a full queue at once; more are refused without waiting.
MAX_OVERFLOWING = 1024


class Overloaded(ResourceExhausted):
    """Refused by admission control: the queue is full. Retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Waiter:
    cost: int
    future: asyncio.Future[None]


class Lane:
    """One admission queue (see the module docstring).

    Args:
        name: the lane's name in messages and metrics.
        slots: jobs running at once (>= 1).
        max_queued: total cost allowed to wait (0: never wait, refuse when all slots are busy).
        metrics: where queue depth, waits and refusals are counted.
    """

    def __init__(
        self,
        name: str,
        slots: int,
        max_queued: int,
        metrics: Metrics,
        *,
        overflow_wait: float = 0.0,
        max_wait: float = float("inf"),
    ) -> None:
        if slots < 1 or max_queued < 0 or overflow_wait < 0:
            raise ValueError("slots must be >= 1, max_queued and overflow_wait >= 0")
        self.overflow_wait = overflow_wait
        self.max_wait = max_wait
        self._room = asyncio.Event()
        self._overflowing = 0
        self.name = name
        self.slots = slots
        self.max_queued = max_queued
        self.running = 0
        self.queued = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._metrics = metrics
        self._job_seconds = 0.1  # moving average of one job's time, for the retry hint
        metrics.admission_slots.labels(name).set(slots)

    @asynccontextmanager
    async def admit(self, cost: int = 1, *, bounded: bool = True) -> AsyncIterator[None]:
        """Hold a slot for the body; wait for one in FIFO order, or raise :class:`Overloaded`.

        Args:
            cost: the job's size in the lane's unit (prompts, images); only waiting costs count.
            bounded: False for the next step of work already admitted elsewhere (it queues for
                a slot like any job, but is never refused).
        """
        start = time.perf_counter()
        if self.running < self.slots and not self._waiters:
            self.running += 1
        else:
            await self._wait(cost, bounded)
        self._publish()
        self._metrics.admission_wait.labels(self.name).observe(time.perf_counter() - start)
        began = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - began
            self._job_seconds += 0.2 * (elapsed / max(cost, 1) - self._job_seconds)
            self._metrics.admission_unit_seconds.labels(self.name).set(self._job_seconds)
            self._release()

    async def _wait(self, cost: int, bounded: bool) -> None:
        if bounded and self._full(cost) and not await self._make_room(cost):
            self._metrics.admission_refused.labels(self.name).inc()
            raise Overloaded(
                f"overloaded: {self.name} queue is full ({self.queued} queued, "
                f"{self.running} running); retry later",
                self.retry_after(),
            )
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self.queued += cost
        self._publish()
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release()  # granted just as the caller left: hand the slot on
            elif waiter in self._waiters:  # else _release already dropped it
                self._waiters.remove(waiter)
                self.queued -= cost
                self._publish()
            raise

    async def _make_room(self, cost: int) -> bool:
        """Wait up to ``overflow_wait`` for the queue to have room for ``cost``.

        A job that finds the queue full is refused after this short wait rather than at once:
        it may get in (a slot frees), and a caller that retries without pause is paced to a
        few tries a second instead of spinning the server's CPU on refusals.
        """
        if self.overflow_wait <= 0 or self._overflowing >= MAX_OVERFLOWING:
            return False
        end = time.monotonic() + self.overflow_wait
        self._overflowing += 1
        try:
            while self._full(cost):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), remaining)
            return True
        finally:
            self._overflowing -= 1

    def _full(self, cost: int) -> bool:
        """No room for ``cost`` more: over the queued cost, or over the expected wait."""
        expected_wait = (self.queued + cost) * self._job_seconds / self.slots
        return self.queued + cost > self.max_queued or expected_wait > self.max_wait

    def _release(self) -> None:
        self.running -= 1
        while self._waiters and self.running < self.slots:
            waiter = self._waiters.popleft()
            self.queued -= waiter.cost
            if waiter.future.done():
                continue  # its caller left (cancelled) in this very tick: skip it
            self.running += 1
            waiter.future.set_result(None)
        # Wake jobs waiting for room in the queue; each checks again (a fresh event each time).
        self._room.set()
        self._room = asyncio.Event()
        self._publish()

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained enough to take another job."""
        estimate = self._job_seconds * (self.queued + 1) / self.slots
        return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, estimate))

    def _publish(self) -> None:
        self._metrics.admission_running.labels(self.name).set(self.running)
        self._metrics.admission_queued.labels(self.name).set(self.queued)
