"""A Refine session outlives the decoder's max_connection_age: when the server's GOAWAY grace
ends the stream (UNAVAILABLE), the SDK opens a new one, replays the steps so far and sends the
next, and the masks equal those of an uninterrupted session (real decoder, real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import samserve.rpc.server as grpc_server
from samserve.core.models import LoadedModel
from samserve_client import _refine
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A connection lives 1.5-3.15 s: long enough to replay a few steps on a loaded machine.
AGE_MS, GRACE_MS = 1500, 1500
#: Longer than the age (+10% jitter) plus the grace: the stream is gone by the next step.
PAUSE_S = 3.5
STEPS: list[tuple[str, Any]] = [
    ("click", (40, 30, 1)),
    ("click", (90, 60, 0)),
    ("box", [10, 10, 100, 80]),
    ("click", (60, 40, 1)),
]


@pytest.fixture
def aging_stack(
    tiny_random: LoadedModel, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StackThread]:
    """Both services with connections recycled every AGE_MS (as a load balancer setup has,
    in minutes rather than seconds)."""
    original = grpc_server.server_options

    def options(max_receive_bytes: int, max_send_bytes: int) -> list[tuple[str, Any]]:
        given = dict(original(max_receive_bytes, max_send_bytes))
        given["grpc.max_connection_age_ms"] = AGE_MS
        given["grpc.max_connection_age_grace_ms"] = GRACE_MS
        return list(given.items())

    monkeypatch.setattr(grpc_server, "server_options", options)
    s = StackThread(tiny_random, redis_url).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def image() -> bytes:
    return png_bytes(make_shapes_image(seed=5, height=96, width=128).image)


def _count_streams(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[int]:
    opened = [0]
    init = cls.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        opened[0] += 1
        init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counting)
    return opened


def _session(stack: StackThread, image: bytes, pause: float) -> list[Any]:
    out = []
    with stack.client() as client, client.refine(image, multimask_output=True) as session:
        for kind, arg in STEPS:
            out.append(session.click(*arg) if kind == "click" else session.box(arg))
            time.sleep(pause)
    return out


def _same(results: list[Any], expected: list[Any]) -> None:
    assert len(results) == len(expected)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)


def test_sync_session_survives_connection_age(
    stack: StackThread, aging_stack: StackThread, image: bytes, monkeypatch
) -> None:
    expected = _session(stack, image, 0)
    opened = _count_streams(monkeypatch, _refine._SyncStream)
    results = _session(aging_stack, image, PAUSE_S)
    assert opened[0] > 1, "the stream was never ended: nothing was resumed"
    _same(results, expected)


def test_async_session_survives_connection_age(
    stack: StackThread, aging_stack: StackThread, image: bytes, monkeypatch
) -> None:
    expected = _session(stack, image, 0)[:3]
    opened = _count_streams(monkeypatch, _refine._AsyncStream)

    async def run() -> list[Any]:
        out = []
        async with (
            aging_stack.async_client() as client,
            client.refine(image, multimask_output=True) as session,
        ):
            for kind, arg in STEPS[:3]:
                out.append(await (session.click(*arg) if kind == "click" else session.box(arg)))
                await asyncio.sleep(PAUSE_S)
        return out

    results = asyncio.run(run())
    assert opened[0] > 1, "the stream was never ended: nothing was resumed"
    _same(results, expected)
