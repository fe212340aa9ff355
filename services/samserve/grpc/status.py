"""One mapping from domain errors to gRPC status, plus per-RPC metrics, for every servicer."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import grpc

from samserve.core.errors import SamServeError
from samserve.core.metrics import Metrics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and client-safe message for an exception raised while handling an RPC."""
    if isinstance(error, SamServeError):
        return getattr(grpc.StatusCode, error.status_name), str(error)
    return grpc.StatusCode.INTERNAL, "internal error (logged by the server)"


class Tracked:
    """Context manager around one RPC (or one stream): metrics, logging, error capture.

    An ``Exception`` raised inside is swallowed and kept as ``code``/``message`` for the caller
    to abort with; cancellation (any other ``BaseException``) is recorded and re-raised. Client
    errors are logged at INFO without a traceback; anything unexpected becomes INTERNAL with a
    fixed message, its traceback in the log, never sent to the client.
    """

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        self.metrics = metrics
        self.service = service
        self.method = method
        self.code = grpc.StatusCode.OK
        self.message = ""
        self._start = 0.0

    @property
    def failed(self) -> bool:
        return self.code is not grpc.StatusCode.OK

    def __enter__(self) -> Tracked:
        self.metrics.inflight.labels(self.service, self.method).inc()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        where = f"{self.service}/{self.method}"
        if exc is None:
            pass
        elif isinstance(exc, Exception):
            self.code, self.message = status_of(exc)
            if isinstance(exc, SamServeError):
                log.info("%s -> %s: %s", where, self.code.name, self.message)
            else:
                log.error("%s failed", where, exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]
        else:
            self.code = grpc.StatusCode.CANCELLED
        m = self.metrics
        m.inflight.labels(self.service, self.method).dec()
        m.latency.labels(self.service, self.method).observe(time.perf_counter() - self._start)
        m.requests.labels(self.service, self.method, self.code.name).inc()
        return isinstance(exc, Exception)

    async def abort_if_failed(self, context: grpc.aio.ServicerContext) -> None:
        """Abort the call with the captured status (no-op when it succeeded)."""
        if self.failed:
            await context.abort(self.code, self.message)


def rpc(service: str, method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Wrap a unary servicer method in :class:`Tracked` and abort with its status on error."""

    def decorate(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            with Tracked(self.metrics, service, method) as call:
                return await fn(self, request, context)
            await call.abort_if_failed(context)
            raise AssertionError("unreachable")  # context.abort always raises

        return wrapper

    return decorate
