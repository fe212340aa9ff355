"""gRPC server factory, health, the metrics endpoint, signals and the drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

#: How often a service re-checks its dependencies for the health status.
HEALTH_INTERVAL_S = 1.0


def server_options(max_receive_bytes: int, max_send_bytes: int) -> list[tuple[str, Any]]:
    """Options of every samserve gRPC server, each with its reason."""
    return [
        # Uploads are whole images: the default 4 MiB is too small; anything larger than
        # the configured limit fails fast with RESOURCE_EXHAUSTED in the gRPC core.
        ("grpc.max_receive_message_length", max_receive_bytes),
        # Replies carry full-size masks and logits for many prompts, up to the response limit
        # (which the decoder checks itself, before it does the work).
        ("grpc.max_send_message_length", max_send_bytes),
        # gRPC Python sets SO_REUSEPORT by default: two servers could then share a port.
        ("grpc.so_reuseport", 0),
        # Recycle connections so new replicas behind a load balancer get traffic: after the
        # age a GOAWAY sends new calls to a new connection; calls already running get the
        # grace to finish, which outlasts the longest deadline a client sets by default
        # (samserve export: 600 s), so a long SegmentEverything is never cut by recycling.
        ("grpc.max_connection_age_ms", 5 * 60 * 1000),
        ("grpc.max_connection_age_grace_ms", 11 * 60 * 1000),
        # Accept the SDK's keepalive pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def build_server(
    address: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    *,
    max_receive_bytes: int,
    max_send_bytes: int = 256 * 1024 * 1024,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Create a grpc.aio server with servicers, health and reflection, bound to ``address``
    (with TLS when ``credentials`` are given).

    Returns:
        The server (not started), the bound port (``:0`` picks one) and its health servicer.

    Raises:
        OSError: ``address`` cannot be bound (in use, or not an address of this host).
    """
    server = grpc.aio.server(
        options=server_options(max_receive_bytes, max_send_bytes), interceptors=list(interceptors)
    )
    for add in register:
        add(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [*service_names, health_name, reflection.SERVICE_NAME], server
    )
    return server, _bind(server, address, credentials), health


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return int(port)


def build_health_server(address: str, health: HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with grpc.health.v1 only, sharing ``health`` (so it reports what the
    main server reports): for the kubelet's native gRPC probe, which cannot speak TLS. It
    carries no samserve service, so it needs no token and exposes nothing else.

    Raises:
        OSError: ``address`` cannot be bound.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server, _bind(server, address, None)


@dataclass
class RunningService:
    """One started gRPC server with its health, metrics endpoint and resources to close."""

    name: str
    server: grpc.aio.Server
    host: str
    port: int
    health: HealthServicer
    service_names: Sequence[str]
    ready: Callable[[], Awaitable[bool]]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: More servers started and stopped with this one (the plaintext health-only port).
    companions: list[grpc.aio.Server] = field(default_factory=list)
    metrics_url: str = ""
    _metrics_http: Any = None
    _watch: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start_metrics(self, registry: CollectorRegistry, host: str, port: int) -> None:
        """Serve ``registry`` at ``http://host:port/metrics`` (port 0 picks one)."""
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
        self._metrics_http = httpd
        self.metrics_url = f"http://{host}:{httpd.server_port}/metrics"

    async def set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def _watch_health(self) -> None:
        last: bool | None = None
        while True:
            try:
                ok = await self.ready()
            except Exception:
                log.exception("%s readiness check failed", self.name)
                ok = False
            if ok != last:
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "%s is %s",
                    self.name,
                    "SERVING" if ok else "NOT_SERVING",
                )
                await self.set_health(ok)
                last = ok
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def start(self) -> None:
        """Start serving and begin following dependency health."""
        await self.server.start()
        for companion in self.companions:
            await companion.start()
        await self.set_health(await self.ready())
        self._watch = asyncio.create_task(self._watch_health(), name=f"{self.name}-health")

    async def stop(self, grace: float) -> None:
        """Drain: NOT_SERVING first, finish in-flight calls, then close resources."""
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for companion in self.companions:
            await companion.stop(0)
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("closing %s", self.name)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        log.info("%s stopped", self.name)


class StopSignal:
    """SIGINT and SIGTERM, caught from construction on: make it before a ready line goes out,
    so a signal sent the moment a caller reads that line is never missed (it would otherwise
    meet Python's default handler, a KeyboardInterrupt in the middle of the event loop)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stop.set)

    async def wait(self) -> None:
        """Return on the first SIGINT or SIGTERM (since construction)."""
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(sig)


async def drain(services: Sequence[RunningService], grace: float) -> None:
    """Stop the services concurrently; each one goes NOT_SERVING, lets its in-flight calls
    finish (up to ``grace`` seconds), then closes its own clients. Callers stop what the services
    depend on (Redis, Triton) only after this returns."""
    await asyncio.gather(*(s.stop(grace) for s in services))
    log.info("shutdown complete")
