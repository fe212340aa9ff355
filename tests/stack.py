"""Test helper: the two services running on their own event loop in a background thread.

Sync tests then call them through ``SamClient`` and async tests through ``AsyncSamClient``
without sharing the servers' loop. Everything is real: gRPC on loopback, a real Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from samserve.compose import start_decoder, start_embedding
from samserve.config import (
    DecoderSettings,
    EmbedderSettings,
    Limits,
    ServerSettings,
    StoreSettings,
)
from samserve.core.models import LoadedModel
from samserve.rpc.server import RunningService, drain
from samserve_client import AsyncSamClient, SamClient

T = TypeVar("T")


class StackThread:
    """Embedding + decoder services for one model against ``redis_url``."""

    def __init__(
        self,
        model: LoadedModel,
        redis_url: str,
        *,
        ttl_seconds: int = 0,
        limits: Limits | None = None,
        store_dtype: str = "float16",
        decoder: DecoderSettings | None = None,
        embedder: EmbedderSettings | None = None,
        server: ServerSettings | None = None,
        store: StoreSettings | None = None,
    ) -> None:
        self.model = model
        self.store = store or StoreSettings(
            redis_url=redis_url, ttl_seconds=ttl_seconds, dtype=store_dtype
        )
        # Both services on loopback with free ports; TLS and tokens come from ``server``.
        self.server = dataclasses.replace(
            server or ServerSettings(), host="127.0.0.1", port=0, metrics_port=0, grace=5
        )
        self.limits = limits or Limits()
        self.decoder_settings = decoder
        self.embedder_settings = embedder
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.embedding: RunningService | None = None
        self.decoder: RunningService | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> StackThread:
        self.start_embedding()
        self.start_decoder()
        return self

    def start_embedding(self) -> None:
        server = self.server
        self.embedding = self.call(
            start_embedding(
                self.model, self.store, self.limits, server, settings=self.embedder_settings
            )
        )

    def start_decoder(self) -> None:
        server = self.server
        self.decoder = self.call(
            start_decoder(self.model, self.store, self.limits, server, self.decoder_settings)
        )

    def stop_decoder(self, grace: float = 5.0) -> None:
        if self.decoder is not None:
            self.call(drain([self.decoder], grace))
            self.decoder = None

    def stop_embedding(self, grace: float = 5.0) -> None:
        if self.embedding is not None:
            self.call(drain([self.embedding], grace))
            self.embedding = None

    @property
    def embedding_address(self) -> str:
        assert self.embedding is not None
        return self.embedding.address

    @property
    def decoder_address(self) -> str:
        assert self.decoder is not None
        return self.decoder.address

    def client(self, **kwargs: Any) -> SamClient:
        return SamClient(self.embedding_address, self.decoder_address, **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncSamClient:
        return AsyncSamClient(self.embedding_address, self.decoder_address, **kwargs)

    def close(self) -> None:
        try:
            self.stop_decoder(1.0)
            self.stop_embedding(1.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
