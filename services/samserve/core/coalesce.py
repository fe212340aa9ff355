"""Single-flight: concurrent calls for the same key share one run and all get its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs at most one ``fn()`` per key at a time; waiters share its result or its error."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``fn`` for ``key`` unless a run is under way; returns (result, shared)."""
        existing = self._inflight.get(key)
        if existing is not None:
            return await asyncio.shield(existing), True
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await fn()
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it, an unwatched one stays quiet
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            del self._inflight[key]
