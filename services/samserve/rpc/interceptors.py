"""One server interceptor for every samserve RPC: status mapping, metrics and logging.

Servicers raise domain errors (``core.errors``); this is the only place that turns them into
gRPC status codes. Client errors are logged at INFO without a traceback; anything unexpected
becomes INTERNAL with a fixed message to the client and its traceback in the log. Health and
reflection pass through untouched, so a probe never waits behind samserve's own work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from samserve.core.admission import Overloaded
from samserve.core.errors import SamServeError
from samserve.core.metrics import Metrics

log = logging.getLogger(__name__)

#: Services whose calls the interceptor handles (health and reflection pass through).
_PREFIX = "/samserve."


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as ``time.monotonic()`` (None when it set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


#: gRPC's retry pushback trailer: how long a client's retry policy waits before it retries.
PUSHBACK = "grpc-retry-pushback-ms"


def pushback_ms(error: BaseException) -> str:
    """The pushback for a RESOURCE_EXHAUSTED answer: the overload's retry hint (at least 1 ms:
    gRPC clients have been seen to hang on 0), or -1 (never retry) for a request over a size
    limit, which no retry can fix."""
    if isinstance(error, Overloaded):
        return str(max(1, round(error.retry_after * 1000)))
    return "-1"


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and client-safe message for an exception raised while handling an RPC."""
    if isinstance(error, SamServeError):
        return getattr(grpc.StatusCode, error.status_name), str(error)
    return grpc.StatusCode.INTERNAL, "internal error (logged by the server)"


def log_failure(where: str, error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Log ``error`` as its kind deserves and return its status (see :func:`status_of`)."""
    code, message = status_of(error)
    if isinstance(error, Overloaded):  # one line per refusal would itself load the server
        log.debug("%s -> %s: %s", where, code.name, message)
    elif isinstance(error, SamServeError):
        log.info("%s -> %s: %s", where, code.name, message)
    else:
        log.error("%s failed", where, exc_info=error)
    return code, message


class _Call:
    """Metrics and status of one RPC while it runs."""

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        self.metrics = metrics
        self.labels = (service, method)
        self.where = f"{service}/{method}"
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        metrics.inflight.labels(*self.labels).inc()

    async def fail(self, error: BaseException, context: grpc.aio.ServicerContext) -> NoReturn:
        """Record ``error`` and end the call with its status (always raises)."""
        if isinstance(error, grpc.aio.AbortError):  # the servicer aborted with its own status
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise error
        self.code, message = log_failure(self.where, error)
        if self.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            context.set_trailing_metadata(((PUSHBACK, pushback_ms(error)),))
        await context.abort(self.code, message)
        raise AssertionError("unreachable: abort raises")

    def cancelled(self) -> None:
        self.code = grpc.StatusCode.CANCELLED

    def done(self) -> None:
        m = self.metrics
        m.inflight.labels(*self.labels).dec()
        m.latency.labels(*self.labels).observe(time.perf_counter() - self.start)
        m.requests.labels(*self.labels, self.code.name).inc()


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every samserve handler: metrics, logging, one mapping of errors to status."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method_path: str = details.method
        if handler is None or not method_path.startswith(_PREFIX):
            return handler
        service, method = method_path[1:].rsplit("/", 1)
        kinds: dict[str, tuple[Callable[..., Any], Callable[..., grpc.RpcMethodHandler]]] = {
            "unary_unary": (self._unary, grpc.unary_unary_rpc_method_handler),
            "stream_unary": (self._unary, grpc.stream_unary_rpc_method_handler),
            "unary_stream": (self._stream, grpc.unary_stream_rpc_method_handler),
            "stream_stream": (self._stream, grpc.stream_stream_rpc_method_handler),
        }
        for attr, (wrap, make) in kinds.items():
            behavior = getattr(handler, attr)
            if behavior is not None:
                return make(
                    wrap(behavior, service, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], service: str, method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self.metrics, service, method)
            try:
                return await behavior(request, context)
            except Exception as e:
                await call.fail(e, context)
            except BaseException:
                call.cancelled()
                raise
            finally:
                call.done()

        return handle

    def _stream(
        self, behavior: Callable[..., AsyncIterator[Any]], service: str, method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(self.metrics, service, method)
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as e:
                await call.fail(e, context)
            except BaseException:
                call.cancelled()
                raise
            finally:
                call.done()

        return handle
