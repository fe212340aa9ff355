"""Admission lanes: bounded concurrency, bounded queued cost, FIFO, fast refusal, clean exits."""

from __future__ import annotations

import asyncio

import pytest

from samserve.core.admission import MAX_RETRY_AFTER, MIN_RETRY_AFTER, Lane, Overloaded
from samserve.core.errors import ResourceExhausted
from samserve.core.metrics import Metrics


def _lane(slots: int = 1, queued: int = 2) -> Lane:
    return Lane("test", slots, queued, Metrics())


async def _hold(lane: Lane, cost: int, entered: list[int], tag: int, release: asyncio.Event):
    async with lane.admit(cost):
        entered.append(tag)
        await release.wait()


async def test_slots_then_fifo_queue_then_refusal() -> None:
    lane = _lane(slots=1, queued=2)
    release = asyncio.Event()
    entered: list[int] = []
    first = asyncio.create_task(_hold(lane, 1, entered, 1, release))
    await asyncio.sleep(0)
    second = asyncio.create_task(_hold(lane, 1, entered, 2, release))
    third = asyncio.create_task(_hold(lane, 1, entered, 3, release))
    await asyncio.sleep(0)
    assert (lane.running, lane.queued) == (1, 2)
    with pytest.raises(Overloaded) as refused:
        async with lane.admit(1):
            pass
    assert isinstance(refused.value, ResourceExhausted)
    assert MIN_RETRY_AFTER <= refused.value.retry_after <= MAX_RETRY_AFTER
    release.set()
    await asyncio.gather(first, second, third)
    assert entered == [1, 2, 3]
    assert (lane.running, lane.queued) == (0, 0)


async def test_cost_counts_against_the_queue() -> None:
    lane = _lane(slots=1, queued=4)
    release = asyncio.Event()
    entered: list[int] = []
    busy = asyncio.create_task(_hold(lane, 1, entered, 1, release))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        async with lane.admit(5):
            pass
    waiting = asyncio.create_task(_hold(lane, 4, entered, 2, release))
    await asyncio.sleep(0)
    assert lane.queued == 4
    release.set()
    await asyncio.gather(busy, waiting)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lane = _lane(slots=1, queued=1)
    release = asyncio.Event()
    entered: list[int] = []
    busy = asyncio.create_task(_hold(lane, 1, entered, 1, release))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(lane, 1, entered, 2, release))
    await asyncio.sleep(0)
    assert lane.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lane.queued == 0
    release.set()
    await busy
    assert (lane.running, lane.queued, entered) == (0, 0, [1])


async def test_unbounded_steps_queue_but_are_never_refused() -> None:
    lane = _lane(slots=1, queued=0)
    release = asyncio.Event()
    entered: list[int] = []
    busy = asyncio.create_task(_hold(lane, 1, entered, 1, release))
    await asyncio.sleep(0)

    async def step() -> None:
        async with lane.admit(1, bounded=False):
            entered.append(2)

    stepping = asyncio.create_task(step())
    await asyncio.sleep(0)
    assert lane.queued == 1
    release.set()
    await asyncio.gather(busy, stepping)
    assert entered == [1, 2]


async def test_a_waiter_cancelled_in_the_tick_its_slot_frees_is_skipped() -> None:
    """The slot goes to the next live waiter: no InvalidStateError for the releaser, no
    ValueError for the leaver, and the counts come back to zero."""
    lane = _lane(slots=1, queued=4)
    release = asyncio.Event()
    entered: list[int] = []
    busy = asyncio.create_task(_hold(lane, 1, entered, 1, release))
    await asyncio.sleep(0)
    leaver = asyncio.create_task(_hold(lane, 1, entered, 2, release))
    stayer = asyncio.create_task(_hold(lane, 1, entered, 3, release))
    await asyncio.sleep(0)
    assert lane.queued == 2
    release.set()  # the busy job wakes first and releases its slot ...
    leaver.cancel()  # ... after the leaver's future is cancelled, before its cleanup runs
    await asyncio.gather(busy, stayer)
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert entered == [1, 3]
    assert (lane.running, lane.queued) == (0, 0)
