"""One encode per image across replicas: a short lease in Redis in front of the encoder.

In-process single-flight (``coalesce.py``) makes the calls of one replica share a run; this
lease makes the replicas share one. The replica that takes the lease (``SET NX PX`` with a
random token) encodes and stores, renewing the lease while it works (a compare-and-``PEXPIRE``
script, every third of the lease), then releases it (a compare-and-``DEL`` script: a lease that
has already passed to another replica is never deleted).

A replica that finds the lease taken waits for the entry by **polling with backoff** (50 ms,
growing by half each time, at most 1 s between looks), within the caller's deadline. Each look
reads the entry and, when it is still missing, tries to take the lease: so a holder that died
(SIGKILL, lost node) costs at most one lease period, after which the lease expires and the
next waiter to look takes it over and encodes. Polling was chosen over keyspace notifications
and pub/sub: it needs no server configuration (managed Redis often forbids
``notify-keyspace-events``), no subscriber connection per waiter, works the same on one Redis
and on a cluster (where pub/sub is broadcast to every node), and a missed message cannot leave
a waiter stuck. Its cost, a GET every second per waiting image, is small next to an encode.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from samserve.core.errors import DeadlineExceeded

log = logging.getLogger(__name__)

T = TypeVar("T")

#: First wait between looks, its growth factor and its cap (seconds).
POLL_FIRST = 0.05
POLL_GROWTH = 1.5
POLL_CAP = 1.0
#: How long a waiter without a deadline waits at most (seconds).
DEFAULT_MAX_WAIT = 300.0


class LeaseStore(Protocol):
    """The three Redis operations a lease needs (``RedisStore`` has them)."""

    async def lease_acquire(self, model_id: str, image_id: str, token: str, ms: int) -> bool: ...

    async def lease_renew(self, model_id: str, image_id: str, token: str, ms: int) -> bool: ...

    async def lease_release(self, model_id: str, image_id: str, token: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseOutcome:
    """What :meth:`EncodeLease.run` did: ``held`` when this replica ran ``work``."""

    held: bool
    waited: float


class EncodeLease:
    """Cross-replica single flight for the encoder, keyed by (model id, image id).

    Args:
        store: where the lease lives (the embedding store's Redis).
        model_id: the model whose encodes are leased.
        lease_seconds: lease period; a dead holder's lease is taken over after it.
        max_wait: how long a waiter without a deadline waits for another replica's entry.
    """

    def __init__(
        self,
        store: LeaseStore,
        model_id: str,
        lease_seconds: float,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        self.store = store
        self.model_id = model_id
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.max_wait = max_wait

    async def run(
        self,
        image_id: str,
        work: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[T | None]],
        deadline: float | None,
    ) -> tuple[T, LeaseOutcome]:
        """``work()`` under the lease, or what ``lookup()`` finds once another replica is done.

        ``lookup`` is tried after taking the lease too (the holder may have finished between
        the caller's first look and now), so ``work`` runs only for a missing entry.

        Raises:
            DeadlineExceeded: the entry did not appear within the deadline (or ``max_wait``).
            Unavailable: Redis unreachable.
        """
        start = time.monotonic()
        until = deadline if deadline is not None else start + self.max_wait
        pause = POLL_FIRST
        while True:
            token = secrets.token_hex(16)
            if await self.store.lease_acquire(self.model_id, image_id, token, self.lease_ms):
                try:
                    found = await lookup()
                    if found is not None:
                        return found, LeaseOutcome(False, time.monotonic() - start)
                    return await self._held(image_id, token, work), LeaseOutcome(
                        True, time.monotonic() - start
                    )
                finally:
                    await asyncio.shield(self._release(image_id, token))
            now = time.monotonic()
            if now + pause > until:
                raise DeadlineExceeded(
                    "image encoder: another replica is encoding this image and did not finish "
                    "within the deadline"
                )
            await asyncio.sleep(pause)
            pause = min(pause * POLL_GROWTH, POLL_CAP)
            found = await lookup()
            if found is not None:
                return found, LeaseOutcome(False, time.monotonic() - start)

    async def _held(self, image_id: str, token: str, work: Callable[[], Awaitable[T]]) -> T:
        renewer = asyncio.create_task(self._renew(image_id, token), name=f"lease {image_id}")
        try:
            return await work()
        finally:
            renewer.cancel()

    async def _renew(self, image_id: str, token: str) -> None:
        """Extend the lease every third of its period while the work runs."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self.store.lease_renew(self.model_id, image_id, token, self.lease_ms):
                    log.warning("encode lease of %s lost: another replica may encode it", image_id)
                    return
            except Exception as e:  # a failed renewal must not fail the encode
                log.warning("encode lease of %s not renewed: %s", image_id, e)

    async def _release(self, image_id: str, token: str) -> None:
        try:
            await self.store.lease_release(self.model_id, image_id, token)
        except Exception as e:  # it expires on its own
            log.warning("encode lease of %s not released (it expires): %s", image_id, e)
