"""Composition: build each service from settings and a loaded model, and start it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from samserve.config import Limits, ServerSettings, StoreSettings
from samserve.core.decoder import Decoder
from samserve.core.embedding import Embedder
from samserve.core.encoder import Encoder, LocalEncoder
from samserve.core.metrics import Metrics
from samserve.core.models import LoadedModel
from samserve.core.store import RedisStore
from samserve.grpc import decoder as decoder_grpc
from samserve.grpc import embedding as embedding_grpc
from samserve.grpc.server import RunningService, build_server
from samserve_client.pb import decoder_pb2_grpc, embedding_pb2_grpc


def _store(settings: StoreSettings) -> RedisStore:
    return RedisStore(
        settings.redis_url,
        ttl_seconds=settings.ttl_seconds,
        dtype=settings.dtype,
        timeout=settings.timeout,
    )


async def _serve(
    name: str,
    service_name: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    metrics: Metrics,
    store: RedisStore,
    limits: Limits,
    settings: ServerSettings,
    closers: list[Callable[[], Awaitable[None]]],
    extra_ready: Callable[[], Awaitable[bool]] | None = None,
) -> RunningService:
    """Bind, start and health-watch one service; ready while Redis (and extras) answer."""
    server, port, health = build_server(
        settings.address, [register], [service_name], max_receive_bytes=limits.max_message_bytes
    )

    async def ready() -> bool:
        up = await store.ping()
        metrics.redis_up.set(1 if up else 0)
        return up and (extra_ready is None or await extra_ready())

    service = RunningService(
        name=name,
        server=server,
        host=settings.host,
        port=port,
        health=health,
        service_names=[service_name],
        ready=ready,
        closers=[*closers, store.close],
    )
    service.start_metrics(metrics.registry, settings.host, settings.metrics_port)
    await service.start()
    return service


async def start_embedding(
    model: LoadedModel,
    store_settings: StoreSettings,
    limits: Limits,
    server_settings: ServerSettings,
    encoder: Encoder | None = None,
) -> RunningService:
    """Start the embedding service (in-process encoder unless ``encoder`` is given)."""
    metrics = Metrics()
    store = _store(store_settings)
    enc = encoder if encoder is not None else LocalEncoder(model.sam)
    embedder = Embedder(
        variant=model.variant,
        model_id=model.model_id,
        encoder=enc,
        store=store,
        metrics=metrics,
        max_image_bytes=limits.max_image_bytes,
        max_pixels=limits.max_pixels,
    )
    servicer = embedding_grpc.EmbeddingServicer(embedder, model, metrics)
    return await _serve(
        "embedding",
        embedding_grpc.SERVICE,
        lambda s: embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(servicer, s),
        metrics=metrics,
        store=store,
        limits=limits,
        settings=server_settings,
        closers=[enc.close],
        extra_ready=enc.ready,
    )


async def start_decoder(
    model: LoadedModel,
    store_settings: StoreSettings,
    limits: Limits,
    server_settings: ServerSettings,
) -> RunningService:
    """Start the decoder service."""
    metrics = Metrics()
    store = _store(store_settings)
    decoder = Decoder(
        variant=model.variant,
        model_id=model.model_id,
        sam=model.sam,
        store=store,
        metrics=metrics,
        lru_entries=limits.lru_entries,
        max_prompts=limits.max_prompts,
        max_points=limits.max_points,
    )
    servicer = decoder_grpc.DecoderServicer(decoder, metrics)
    return await _serve(
        "decoder",
        decoder_grpc.SERVICE,
        lambda s: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(servicer, s),
        metrics=metrics,
        store=store,
        limits=limits,
        settings=server_settings,
        closers=[decoder.close],
    )
