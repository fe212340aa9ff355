"""What the SDK's retry policy does against a real grpc.aio server that refuses every call:
retries only UNAVAILABLE on idempotent RPCs, honours grpc-retry-pushback-ms, throttles.

Observed with grpc 1.81 (Python server and client): a trailer set with
``context.set_trailing_metadata`` before ``context.abort`` reaches the client, and the
client's retry honours it: -1 stops the retries, a positive value replaces the backoff. The
retry must come from ``abort``: a handler that sets the code and returns a message has sent a
response, which commits the call (no retry at all). A pushback of 0 left the call hanging past
its deadline (grpc/grpc#41036 looks like the same bug), so servers must send -1 or >= 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from samserve_client import (
    DeadlineExceededError,
    EmbeddingRef,
    InvalidArgumentError,
    SamClient,
    UnavailableError,
)
from samserve_client._refine import MAX_RESUMES
from samserve_client.pb import decoder_pb2, decoder_pb2_grpc

pytestmark = pytest.mark.integration

REF = EmbeddingRef("ab" * 32, True, "m", 4, 4)


class _Refusing(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(self) -> None:
        self.attempts: dict[str, int] = {"Segment": 0, "Refine": 0}
        self.pushback: str | None = None
        self.code = grpc.StatusCode.UNAVAILABLE

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.attempts[method] += 1
        if self.pushback is not None:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
        await context.abort(self.code, "shedding")

    async def Segment(  # noqa: N802
        self, request: decoder_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> decoder_pb2.SegmentResponse:
        await self._refuse("Segment", context)
        return decoder_pb2.SegmentResponse()

    async def Refine(  # noqa: N802
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decoder_pb2.RefineResponse]:
        async for _ in request_iterator:
            await self._refuse("Refine", context)
        yield decoder_pb2.RefineResponse()


@pytest.fixture
async def refusing() -> AsyncIterator[tuple[_Refusing, str]]:
    servicer = _Refusing()
    server = grpc.aio.server()
    decoder_pb2_grpc.add_DecoderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


def _segments(target: str, calls: int, timeout: float, servicer: _Refusing) -> list[Any]:
    """(attempts, error type) of each of ``calls`` segment calls through one client."""
    out = []
    with SamClient(target, target) as client:
        for _ in range(calls):
            before = servicer.attempts["Segment"]
            with pytest.raises(Exception) as info:
                client.segment(REF, points=[[1, 1]], timeout=timeout)
            out.append((servicer.attempts["Segment"] - before, info.type))
    return out


async def test_unavailable_is_retried_and_pushback_honoured(refusing) -> None:
    servicer, target = refusing
    assert await asyncio.to_thread(_segments, target, 1, 20, servicer) == [(4, UnavailableError)]

    servicer.pushback = "-1"  # the server says: do not retry
    assert await asyncio.to_thread(_segments, target, 1, 20, servicer) == [(1, UnavailableError)]

    # A positive pushback replaces the 0.1 s backoff: a retry a minute away lies past the
    # 1 s deadline, so there is no second attempt.
    servicer.pushback = "60000"
    assert await asyncio.to_thread(_segments, target, 1, 1, servicer) == [
        (1, DeadlineExceededError)
    ]


async def test_only_unavailable_is_retried(refusing) -> None:
    servicer, target = refusing
    servicer.code = grpc.StatusCode.INVALID_ARGUMENT
    assert await asyncio.to_thread(_segments, target, 1, 20, servicer) == [
        (1, InvalidArgumentError)
    ]


async def test_retries_are_throttled(refusing) -> None:
    servicer, target = refusing
    # 10 tokens, 1 per failed attempt: the first call's 4 attempts leave 6, the second call's
    # failure leaves 5, at or under half: no retries until successes earn tokens back.
    attempts = await asyncio.to_thread(_segments, target, 4, 20, servicer)
    assert attempts == [(4, UnavailableError)] + [(1, UnavailableError)] * 3


def _refine_once(target: str) -> None:
    with SamClient(target, target) as client, client.refine(REF) as session:
        session.click(1, 1)


async def test_refine_is_resumed_by_the_sdk_not_retried_by_grpc(refusing) -> None:
    servicer, target = refusing
    with pytest.raises(UnavailableError):
        await asyncio.to_thread(_refine_once, target)
    assert servicer.attempts["Refine"] == 1 + MAX_RESUMES
