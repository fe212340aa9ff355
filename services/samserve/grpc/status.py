"""One mapping from domain errors to gRPC status, plus per-RPC metrics, for every servicer."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
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


def rpc(service: str, method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Wrap a unary servicer method: metrics, and domain errors aborted with their status.

    Client errors are logged at INFO without a traceback; anything unexpected becomes
    INTERNAL with a fixed message and the traceback goes to the log, never to the client.
    """

    def decorate(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            metrics: Metrics = self.metrics
            metrics.inflight.labels(service, method).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except SamServeError as e:
                code, message = status_of(e)
                log.info("%s/%s -> %s: %s", service, method, code.name, message)
            except Exception as e:
                code, message = status_of(e)
                log.exception("%s/%s failed", service, method)
            except BaseException:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                metrics.inflight.labels(service, method).dec()
                metrics.latency.labels(service, method).observe(time.perf_counter() - start)
                metrics.requests.labels(service, method, code.name).inc()
            await context.abort(code, message)
            raise AssertionError("unreachable")  # context.abort always raises

        return wrapper

    return decorate
