"""Single-flight: one run per key; a caller that leaves takes nothing from the others."""

from __future__ import annotations

import asyncio

import pytest

from samserve.core.coalesce import SingleFlight


async def test_a_follower_outlives_a_cancelled_leader() -> None:
    flight: SingleFlight[str] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> str:
        nonlocal runs
        runs += 1
        await gate.wait()
        return "done"

    leader = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    gate.set()
    assert await follower == ("done", True)
    assert runs == 1


async def test_the_run_stops_when_every_caller_has_left() -> None:
    flight: SingleFlight[str] = SingleFlight()
    stopped = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()
        return "never"

    caller = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(stopped.wait(), 5)
    assert flight._inflight == {}


async def test_errors_reach_every_caller() -> None:
    flight: SingleFlight[str] = SingleFlight()

    async def fail() -> str:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    results = await asyncio.gather(
        flight.run("k", fail), flight.run("k", fail), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
