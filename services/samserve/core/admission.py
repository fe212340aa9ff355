"""Admission control: bounded concurrency and a bounded queue, refusing fast past them.

A :class:`Lane` guards one kind of work (the decoder's prompt decodes, its segment-everything
runs, the embedding service's encoder runs, image decodes). At most ``slots`` jobs run at once;
others wait in FIFO order while the *cost* waiting (e.g. prompts, not calls) stays within
``max_queued``. Past that a job is refused at once with :class:`Overloaded`, which carries how
long to wait before trying again; the RPC layer sends it as RESOURCE_EXHAUSTED with gRPC's
``grpc-retry-pushback-ms``. Bounding the queued cost bounds the wait of an admitted job to about
``max_queued`` units of work divided by ``slots``, which is what keeps admitted latency close to
the quiet latency under any load. A waiter whose caller leaves (cancellation, deadline) leaves
the queue.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from samserve.core.errors import ResourceExhausted
from samserve.core.metrics import Metrics

#: Bounds of the retry hint given with a refusal, seconds.
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 5.0


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

    def __init__(self, name: str, slots: int, max_queued: int, metrics: Metrics) -> None:
        if slots < 1 or max_queued < 0:
            raise ValueError("slots must be >= 1 and max_queued >= 0")
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
            self._release()

    async def _wait(self, cost: int, bounded: bool) -> None:
        if bounded and self.queued + cost > self.max_queued:
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
            else:
                self._waiters.remove(waiter)
                self.queued -= cost
                self._publish()
            raise

    def _release(self) -> None:
        self.running -= 1
        while self._waiters and self.running < self.slots:
            waiter = self._waiters.popleft()
            self.queued -= waiter.cost
            self.running += 1
            waiter.future.set_result(None)
        self._publish()

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained enough to take another job."""
        estimate = self._job_seconds * (self.queued + 1) / self.slots
        return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, estimate))

    def _publish(self) -> None:
        self._metrics.admission_running.labels(self.name).set(self.running)
        self._metrics.admission_queued.labels(self.name).set(self.queued)
