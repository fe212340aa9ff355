"""Single-flight: concurrent calls for the same key share one run and all get its result.

The run belongs to none of its callers: it is a task of its own, so a caller that leaves
(cancelled, or out of time) takes nothing from the others. When the last caller has left, the
run is cancelled, because nobody waits for it any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """Runs at most one ``fn()`` per key at a time; waiters share its result or its error."""

    def __init__(self) -> None:
        self._inflight: dict[str, _Flight[T]] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``fn`` for ``key`` unless a run is under way; returns (result, shared)."""
        flight = self._inflight.get(key)
        shared = flight is not None
        if flight is None:
            flight = _Flight(asyncio.create_task(self._run(key, fn), name=f"single-flight {key}"))
            self._inflight[key] = flight
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), shared
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody is waiting for it any more

    async def _run(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        finally:
            self._inflight.pop(key, None)
