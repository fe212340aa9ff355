"""Channel construction shared by the sync and async clients: limits, keepalive, retries."""

from __future__ import annotations

import json
from typing import Any

import grpc

#: Default per-call deadline in seconds (an uncached embed of a large image on CPU fits).
DEFAULT_TIMEOUT = 60.0
#: Largest message either side sends: images up to the server's byte limit, many masks back.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# Retries happen in the gRPC core, only for UNAVAILABLE, and only because every samserve RPC
# is idempotent: Embed is content-addressed, Segment reads.
_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": "samserve.v1.EmbeddingService"},
                {"service": "samserve.v1.DecoderService"},
            ],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options used by both clients."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        # Detect dead peers behind idle load balancers without flooding the server.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


def sync_channel(address: str) -> grpc.Channel:
    """An insecure sync channel (``dns:///host:port`` spreads calls over every address)."""
    return grpc.insecure_channel(address, options=channel_options())


def aio_channel(address: str) -> grpc.aio.Channel:
    """An insecure asyncio channel with the same options as :func:`sync_channel`."""
    return grpc.aio.insecure_channel(address, options=channel_options())
