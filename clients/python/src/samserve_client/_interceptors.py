"""gRPC errors become :class:`SamServeError` subclasses here, once, for every call of the SDK.

Sync channels go through :class:`ErrorMapping` (``grpc.intercept_channel``); asyncio channels
take :func:`aio_interceptors` (one object per call kind: ``grpc.aio`` files each interceptor
under the first kind it implements).

What grpc 1.81 does with an exception raised in an interceptor decides the shapes below:
- sync unary response: the continuation returns the failed call instead of raising; raising the
  mapped error from ``intercept_*`` reaches the caller as it is.
- sync stream response: errors surface while iterating, so the call is wrapped in an iterator
  that maps them.
- aio unary response: an exception raised by ``intercept_*`` reaches the caller, but it stays in
  the interceptor task, and ``InterceptedCall.__del__`` re-raises it (an "exception ignored"
  at garbage collection). The interceptor therefore returns a call whose ``await`` maps.
- aio stream response: returning an async generator that maps works; the call keeps ``cancel()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import grpc

from samserve_client.errors import from_rpc_error


def _raise_mapped(outcome: Any) -> Any:
    """The outcome of a sync unary-response call, or its error as a SamServeError."""
    if isinstance(outcome, grpc.RpcError):
        # A failure that is not an RPC status (a request that would not serialise) comes back
        # wrapped; its own exception says more than INTERNAL would.
        cause = outcome.exception() if isinstance(outcome, grpc.Future) else outcome
        if not isinstance(cause, grpc.RpcError):
            raise cause
        raise from_rpc_error(cause)
    return outcome


class _MappedResponses:
    """A sync response stream whose errors are SamServeErrors; ``cancel()`` ends the call."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class ErrorMapping(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Sync interceptor: every call fails with a SamServeError, never a grpc.RpcError."""

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return _raise_mapped(continuation(client_call_details, request))

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _raise_mapped(continuation(client_call_details, request_iterator))

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return _MappedResponses(continuation(client_call_details, request))

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _MappedResponses(continuation(client_call_details, request_iterator))


class _MappedUnaryCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """An aio unary-response call whose ``await`` raises SamServeErrors; the rest delegates."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return response

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(callback)

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()


async def _mapped_stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.RpcError as e:
        raise from_rpc_error(e) from e


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return _MappedUnaryCall(await continuation(client_call_details, request))


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _MappedUnaryCall(await continuation(client_call_details, request_iterator))


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return _mapped_stream(await continuation(client_call_details, request))


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return _mapped_stream(await continuation(client_call_details, request_iterator))


def aio_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The asyncio twins of :class:`ErrorMapping`, one per call kind."""
    return [_AioUnaryUnary(), _AioStreamUnary(), _AioUnaryStream(), _AioStreamStream()]
