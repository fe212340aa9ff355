"""Errors are mapped once, by the SDK's client interceptors, for every call kind (unary and
streaming requests and responses), sync and asyncio, against a real grpc.aio server."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from samserve_client import NotFoundError, SamServeError
from samserve_client._channel import aio_channel, sync_channel

pytestmark = pytest.mark.integration

SERVICE = "test.Kinds"


async def _unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "uu")
    return b""


async def _unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.NOT_FOUND, "us")


async def _stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        pass
    await context.abort(grpc.StatusCode.NOT_FOUND, "su")
    return b""


async def _stream_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
    await context.abort(grpc.StatusCode.NOT_FOUND, "ss")


async def _hang(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        pass
    await asyncio.sleep(3600)
    return b""


@pytest.fixture
async def target() -> AsyncIterator[str]:
    server = grpc.aio.server()
    handlers = {
        "UU": grpc.unary_unary_rpc_method_handler(_unary_unary),
        "US": grpc.unary_stream_rpc_method_handler(_unary_stream),
        "SU": grpc.stream_unary_rpc_method_handler(_stream_unary),
        "SS": grpc.stream_stream_rpc_method_handler(_stream_stream),
        "HANG": grpc.stream_unary_rpc_method_handler(_hang),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _check(error: SamServeError, details: str) -> None:
    assert type(error) is NotFoundError
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.details == details
    assert isinstance(error.__cause__, grpc.RpcError)


def _sync_calls(target: str) -> dict[str, Any]:
    channel = sync_channel(target, None)
    out: dict[str, Any] = {}
    try:
        with pytest.raises(SamServeError) as uu:
            channel.unary_unary(f"/{SERVICE}/UU")(b"x", timeout=10)
        out["UU"] = uu.value
        with pytest.raises(SamServeError) as su:
            channel.stream_unary(f"/{SERVICE}/SU")(iter([b"a", b"b"]), timeout=10)
        out["SU"] = su.value
        for kind, request in (("US", b"x"), ("SS", iter([b"a", b"b"]))):
            method = getattr(channel, "unary_stream" if kind == "US" else "stream_stream")
            received: list[bytes] = []
            with pytest.raises(SamServeError) as info:
                for response in method(f"/{SERVICE}/{kind}")(request, timeout=10):
                    received.append(response)
            out[kind] = (received, info.value)
    finally:
        channel.close()
    return out


async def test_sync_interceptor_maps_every_call_kind(target: str) -> None:
    out = await asyncio.to_thread(_sync_calls, target)
    _check(out["UU"], "uu")
    _check(out["SU"], "su")
    assert out["US"][0] == [b"first"]
    _check(out["US"][1], "us")
    assert out["SS"][0] == [b"a", b"b"]
    _check(out["SS"][1], "ss")


async def _aio_calls(target: str) -> None:
    channel = aio_channel(target, None)

    async def requests() -> AsyncIterator[bytes]:
        for r in (b"a", b"b"):
            yield r

    try:
        with pytest.raises(SamServeError) as uu:
            await channel.unary_unary(f"/{SERVICE}/UU")(b"x", timeout=10)
        _check(uu.value, "uu")
        with pytest.raises(SamServeError) as su:
            await channel.stream_unary(f"/{SERVICE}/SU")(requests(), timeout=10)
        _check(su.value, "su")
        received: list[bytes] = []
        with pytest.raises(SamServeError) as us:
            async for r in channel.unary_stream(f"/{SERVICE}/US")(b"x", timeout=10):
                received.append(r)
        assert received == [b"first"]
        _check(us.value, "us")
        received = []
        with pytest.raises(SamServeError) as ss:
            async for r in channel.stream_stream(f"/{SERVICE}/SS")(requests(), timeout=10):
                received.append(r)
        assert received == [b"a", b"b"]
        _check(ss.value, "ss")
    finally:
        await channel.close()


async def test_aio_interceptors_map_every_call_kind(target: str) -> None:
    # Garbage that earlier tests left is theirs, not this test's: collect it first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
    await _aio_calls(target)
    # grpc.aio keeps an exception that escapes an interceptor in its task, and the call's
    # __del__ raises it again ("exception ignored"): collected here, under filterwarnings=error,
    # that fails this test. The SDK's interceptors return calls that raise when awaited instead.
    gc.collect()


def _deadline_zero(target: str) -> SamServeError:
    channel = sync_channel(target, None)
    try:
        with pytest.raises(SamServeError) as info:
            # A server that never answers: the deadline, not the server, ends the call.
            channel.stream_unary(f"/{SERVICE}/HANG")(_never_ending(), timeout=0.2)
        return info.value
    finally:
        channel.close()


def _never_ending() -> Iterator[bytes]:
    yield b"a"


async def test_deadline_errors_are_mapped_too(target: str) -> None:
    from samserve_client import DeadlineExceededError

    error = await asyncio.to_thread(_deadline_zero, target)
    assert type(error) is DeadlineExceededError
