"""Channels for both clients: limits, keepalive, the retry policy, TLS and token credentials."""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

import grpc

from samserve_client._interceptors import ErrorMapping, aio_interceptors
from samserve_client.pb import decoder_pb2, embedding_pb2

#: Default per-call deadline in seconds (an uncached embed of a large image on CPU fits).
DEFAULT_TIMEOUT = 60.0
#: Largest message either side sends: images up to the server's byte limit, many masks back.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: The only status codes the gRPC core retries, and only for IDEMPOTENT_METHODS. A server that
#: sheds load answers RESOURCE_EXHAUSTED with a grpc-retry-pushback-ms trailer saying when to try
#: again; every other RESOURCE_EXHAUSTED (a request over a size limit) carries -1, which stops
#: the retry, so only refusals that may succeed later are retried.
RETRYABLE_STATUS_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

_EMBEDDING = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"]
_DECODER = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"]

#: RPCs that may be sent twice: the Embed* ones are content-addressed, the others only read.
#: Refine is not one: its stream holds a session; the SDK resumes it itself by replaying it.
IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    (_EMBEDDING.full_name, "Embed"),
    (_EMBEDDING.full_name, "EmbedStream"),
    (_EMBEDDING.full_name, "EmbedCrops"),
    (_EMBEDDING.full_name, "GetModelInfo"),
    (_EMBEDDING.full_name, "GetEmbedding"),
    (_DECODER.full_name, "Segment"),
    (_DECODER.full_name, "SegmentEverything"),
)
#: RPCs deliberately left out of the retry policy.
NOT_RETRIED_METHODS: tuple[tuple[str, str], ...] = ((_DECODER.full_name, "Refine"),)

SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": s, "method": m} for s, m in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
            },
        }
    ],
    # Per channel and server: a failed call costs 1 token, a success earns 0.1, and retries
    # pause while 5 or fewer of the 10 tokens remain. Once more than about 1 call in 11 fails,
    # each call is sent once, so a server shedding load never meets a retry storm. A server's
    # grpc-retry-pushback-ms trailer overrides the backoff (and -1 stops the retries).
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

#: A TLS file as a path, or its PEM bytes.
TlsFile = str | os.PathLike[str] | bytes


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options used by both clients."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        # Detect dead peers behind idle load balancers without flooding the server.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # gRPC 1.81 does not enforce keepalive_timeout_ms once a request is sent (a hung peer's
        # kernel still acknowledges the ping); the ping timeout then fails the call (seen on the
        # Triton channel: tests/integration/test_triton_rebalance.py).
        ("grpc.http2.ping_timeout_ms", 20_000),
    ]


def _read(value: TlsFile | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _hosts(target: str) -> list[str] | None:
    """The hosts a gRPC target names, or None for a unix socket."""
    if target.startswith(("unix:", "unix-abstract:")):
        return None
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif sep and scheme == "dns":
        # dns:[//authority/]host[:port]
        addresses = [rest[2:].partition("/")[2] if rest.startswith("//") else rest]
    else:
        addresses = [target]
    hosts = []
    for address in addresses:
        if address.startswith("["):
            hosts.append(address[1:].partition("]")[0])
        elif address.count(":") > 1:
            hosts.append(address)  # a bare IPv6 address, no port
        else:
            hosts.append(address.partition(":")[0])
    return hosts


def is_loopback(target: str) -> bool:
    """Whether every address of ``target`` is on this machine (a unix socket, localhost or a
    loopback IP), so that a plaintext channel to it never crosses a network."""
    hosts = _hosts(target)
    if hosts is None:
        return True

    def local(host: str) -> bool:
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a DNS name: it may resolve anywhere

    return all(local(h) for h in hosts)


def credentials(
    target: str,
    *,
    tls_ca: TlsFile | None = None,
    tls_cert: TlsFile | None = None,
    tls_key: TlsFile | None = None,
    token: str | None = None,
) -> grpc.ChannelCredentials | None:
    """The credentials of a channel to ``target``; None for plaintext without a token.

    ``tls_ca`` alone means TLS (the server's certificate must chain to it); ``tls_cert`` with
    ``tls_key`` adds a client certificate (mutual TLS; without ``tls_ca`` the system roots check
    the server). ``token`` is sent as ``authorization: Bearer <token>`` on every call.

    Raises:
        ValueError: one of ``tls_cert``/``tls_key`` without the other; an empty token; a token
            over plaintext to an address that is not loopback (it would travel in the clear).
        OSError: a TLS file that cannot be read.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together: mutual TLS needs both")
    call: grpc.CallCredentials | None = None
    if token is not None:
        if not token.strip():
            raise ValueError("token is empty")
        call = grpc.access_token_call_credentials(token)
    channel: grpc.ChannelCredentials
    if tls_ca is not None or tls_cert is not None:
        channel = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca),
            private_key=_read(tls_key),
            certificate_chain=_read(tls_cert),
        )
    elif call is not None:
        if not is_loopback(target):
            raise ValueError(
                f"refusing to send a token in plaintext to {target}: give tls_ca to use TLS "
                "(only loopback addresses may carry a token without it)"
            )
        # Local credentials accept call credentials and check that the peer is local.
        kind = (
            grpc.LocalConnectionType.UDS
            if _hosts(target) is None
            else grpc.LocalConnectionType.LOCAL_TCP
        )
        channel = grpc.local_channel_credentials(kind)
    else:
        return None
    return channel if call is None else grpc.composite_channel_credentials(channel, call)


def sync_channel(target: str, creds: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A sync channel whose calls raise SamServeErrors (``dns:///name:port`` balances)."""
    raw = (
        grpc.insecure_channel(target, options=channel_options())
        if creds is None
        else grpc.secure_channel(target, creds, options=channel_options())
    )
    return grpc.intercept_channel(raw, ErrorMapping())


def aio_channel(target: str, creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """The asyncio twin of :func:`sync_channel`."""
    if creds is None:
        return grpc.aio.insecure_channel(
            target, options=channel_options(), interceptors=aio_interceptors()
        )
    return grpc.aio.secure_channel(
        target, creds, options=channel_options(), interceptors=aio_interceptors()
    )
