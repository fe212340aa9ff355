"""Transport security of the services: TLS (and mutual TLS) credentials, and bearer tokens.

Tokens are checked by :class:`AuthInterceptor` on every call but grpc.health.v1's, so probes
work without one and reflection needs one. A missing or unknown token gets UNAUTHENTICATED. A
token's name may appear in logs and metrics; the token itself never does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from samserve.core.metrics import Metrics
from samserve.core.tokens import TokenFile

log = logging.getLogger(__name__)

#: Calls that need no token: the health service (kubelet probes, load balancers).
OPEN_PREFIX = "/grpc.health.v1.Health/"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca``, clients must present a certificate
    signed by it (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))],
        root_certificates=None if client_ca is None else _read(client_ca),
        require_client_auth=client_ca is not None,
    )


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED for a call without a known bearer token (health excepted)."""

    def __init__(self, tokens: TokenFile, metrics: Metrics) -> None:
        self.tokens = tokens
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIX):
            return handler
        presented = _bearer(details.invocation_metadata)
        name = self.tokens.match(presented) if presented else None
        if name is not None:
            self.metrics.auth.labels(name, "ok").inc()
            return handler
        self.metrics.auth.labels("-", "missing" if presented is None else "unknown").inc()
        log.info("%s -> UNAUTHENTICATED (%s token)", details.method,
                 "no" if presented is None else "an unknown")  # fmt: skip
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for attr, make in kinds.items():
        if getattr(handler, attr) is not None:
            return make(
                deny,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
