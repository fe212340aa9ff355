"""Composition: build each service from settings and a loaded model, and start it."""

from __future__ import annotations

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
    server, port, health = build_server(
        server_settings.address,
        [lambda s: embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(servicer, s)],
        [embedding_grpc.SERVICE],
        max_receive_bytes=limits.max_message_bytes,
    )

    async def ready() -> bool:
        up = await store.ping()
        metrics.redis_up.set(1 if up else 0)
        return up and await enc.ready()

    service = RunningService(
        name="embedding",
        server=server,
        host=server_settings.host,
        port=port,
        health=health,
        service_names=[embedding_grpc.SERVICE],
        ready=ready,
        closers=[enc.close, store.close],
    )
    service.start_metrics(metrics.registry, server_settings.host, server_settings.metrics_port)
    await service.start()
    return service


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
    server, port, health = build_server(
        server_settings.address,
        [lambda s: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(servicer, s)],
        [decoder_grpc.SERVICE],
        max_receive_bytes=limits.max_message_bytes,
    )

    async def ready() -> bool:
        up = await store.ping()
        metrics.redis_up.set(1 if up else 0)
        return up

    service = RunningService(
        name="decoder",
        server=server,
        host=server_settings.host,
        port=port,
        health=health,
        service_names=[decoder_grpc.SERVICE],
        ready=ready,
        closers=[decoder.close, store.close],
    )
    service.start_metrics(metrics.registry, server_settings.host, server_settings.metrics_port)
    await service.start()
    return service
