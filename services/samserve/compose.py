"""The composition root: build each service from settings and a loaded model, and start it.

This is the one module that knows every layer: the core objects (store, encoder, embedder,
decoder, metrics), the gRPC servicers and server, and the settings that configure them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from samserve.config import (
    DecoderSettings,
    EmbedderSettings,
    Limits,
    ServerSettings,
    StoreSettings,
)
from samserve.core.cpus import available_cpus, decoder_threads
from samserve.core.decoder import Decoder
from samserve.core.embedding import Embedder, EmbedLimits
from samserve.core.encoder import Encoder, LocalEncoder
from samserve.core.errors import ConfigError
from samserve.core.family import family
from samserve.core.lease import EncodeLease
from samserve.core.metrics import Metrics
from samserve.core.models import LoadedModel
from samserve.core.sam2.decoder import Sam2Decoder
from samserve.core.sam2.encoder import Sam2LocalEncoder
from samserve.core.store import RedisStore
from samserve.core.tokens import TokenFile
from samserve.rpc import decoder as decoder_rpc
from samserve.rpc import embedding as embedding_rpc
from samserve.rpc.interceptors import ServiceInterceptor
from samserve.rpc.security import AuthInterceptor, server_credentials
from samserve.rpc.server import RunningService, build_health_server, build_server
from samserve_client.pb import decoder_pb2_grpc, embedding_pb2_grpc

log = logging.getLogger(__name__)

#: Encoder runs in flight at once on Triton by default: its dynamic batcher's max_batch_size.
TRITON_ENCODER_SLOTS = 8


def _store(settings: StoreSettings) -> RedisStore:
    return RedisStore(
        settings.redis_url,
        ttl_seconds=settings.ttl_seconds,
        dtype=settings.dtype,
        timeout=settings.redis_timeout,
        tls_ca=settings.redis_tls_ca,
        tls_cert=settings.redis_tls_cert,
        tls_key=settings.redis_tls_key,
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
    """Bind, start and health-watch one service; ready while its extras (Triton) answer, also
    while Redis is away (degraded).

    Raises:
        ConfigError: the gRPC or metrics port cannot be bound (the message names the flag).
    """
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.auth_tokens is not None:
        interceptors.append(AuthInterceptor(TokenFile(settings.auth_tokens), metrics))
    interceptors.append(ServiceInterceptor(metrics))
    credentials = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
    try:
        server, port, health = build_server(
            settings.address,
            [register],
            [service_name],
            max_receive_bytes=limits.max_message_bytes,
            max_send_bytes=limits.max_response_bytes + 1024 * 1024,
            interceptors=interceptors,
            credentials=credentials,
        )
    except OSError as e:
        raise ConfigError(f"{settings.port_flag()}: {e}") from None
    companions = []
    if settings.health_port:
        try:
            health_server, _ = build_health_server(
                f"{settings.host}:{settings.health_port}", health
            )
        except OSError as e:
            raise ConfigError(f"{settings.port_flag('health_port')}: {e}") from None
        companions.append(health_server)

    redis_was_up = [True]

    async def ready() -> bool:
        """What this pod can still do. Redis is shared by every pod: its outage is *degraded*
        (the gauge, one log line), never NOT_SERVING, or one dependency's blip would take
        every endpoint out of the Service at once. Decoders keep answering from their LRU;
        calls that need Redis get UNAVAILABLE. Pod-local dependencies (Triton) still count."""
        up = await store.ping()
        metrics.redis_up.set(1 if up else 0)
        metrics.degraded.set(0 if up else 1)
        if up != redis_was_up[0]:
            if up:
                log.info("%s: Redis is back, degraded mode over", name)
            else:
                log.warning(
                    "%s: Redis unreachable, degraded mode (SERVING; calls that need Redis get "
                    "UNAVAILABLE)",
                    name,
                )
            redis_was_up[0] = up
        return extra_ready is None or await extra_ready()

    service = RunningService(
        name=name,
        server=server,
        host=settings.host,
        port=port,
        health=health,
        service_names=[service_name],
        ready=ready,
        closers=[*closers, store.close],
        companions=companions,
    )
    try:
        service.start_metrics(metrics.registry, settings.host, settings.metrics_port)
    except OSError as e:
        raise ConfigError(
            f"{settings.port_flag('metrics_port')}: cannot listen on "
            f"{settings.host}:{settings.metrics_port} ({e.strerror or e})"
        ) from None
    await service.start()
    return service


async def start_embedding(
    model: LoadedModel,
    store_settings: StoreSettings,
    limits: Limits,
    server_settings: ServerSettings,
    encoder: Encoder | None = None,
    settings: EmbedderSettings | None = None,
) -> RunningService:
    """Start the embedding service (in-process encoder unless ``encoder`` is given)."""
    settings = settings or EmbedderSettings()
    metrics = Metrics()
    store = _store(store_settings)
    if encoder is None and model.parts != "all":
        raise ConfigError("--encoder: an in-process encoder needs the whole model loaded")
    if encoder is not None:
        enc = encoder
    elif model.family == "sam2":
        enc = Sam2LocalEncoder(model.sam)
    else:
        enc = LocalEncoder(model.sam)
    local = isinstance(enc, LocalEncoder | Sam2LocalEncoder)
    embedder = Embedder(
        variant=model.variant,
        model_id=model.model_id,
        encoder=enc,
        store=store,
        metrics=metrics,
        limits=EmbedLimits(
            max_image_bytes=limits.max_image_bytes,
            max_pixels=limits.max_pixels,
            max_decode_bytes=settings.max_decode_bytes,
            decode_slots=settings.decode_slots,
            encoder_slots=settings.encoder_slots or (1 if local else TRITON_ENCODER_SLOTS),
            max_queued_encodes=settings.max_queued_encodes,
            queue_full_wait=limits.queue_full_wait,
        ),
        family=family(model.family),
        lease=(
            EncodeLease(store, model.model_id, settings.encode_lease)
            if settings.encode_lease > 0
            else None
        ),
    )
    servicer = embedding_rpc.EmbeddingServicer(embedder, model)
    return await _serve(
        "embedding",
        embedding_rpc.SERVICE,
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
    settings: DecoderSettings | None = None,
) -> RunningService:
    """Start the decoder service."""
    settings = settings or DecoderSettings()
    threads = decoder_threads(settings.decoder_workers, settings.decoder_threads, available_cpus())
    metrics = Metrics()
    store = _store(store_settings)
    decoder_class = Sam2Decoder if model.family == "sam2" else Decoder
    decoder = decoder_class(
        variant=model.variant,
        model_id=model.model_id,
        sam=model.sam,
        store=store,
        metrics=metrics,
        lru_entries=settings.lru_entries,
        max_prompts=limits.max_prompts,
        max_points=limits.max_points,
        workers=threads.workers,
        intra_op_threads=threads.intra_op,
        cpus=threads.cpus,
        work_bytes=settings.work_bytes,
        max_response_bytes=limits.max_response_bytes,
        max_queued_prompts=settings.max_queued_prompts,
        max_queued_everything=settings.max_queued_everything,
        max_everything_work=settings.max_everything_work,
        queue_full_wait=limits.queue_full_wait,
        max_queue_seconds=settings.max_queue_seconds,
        runtime=settings.decoder_runtime,
    )
    log.info("decoder: the mask decoder runs on %s", decoder.runtime_label)
    servicer = decoder_rpc.DecoderServicer(decoder)
    return await _serve(
        "decoder",
        decoder_rpc.SERVICE,
        lambda s: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(servicer, s),
        metrics=metrics,
        store=store,
        limits=limits,
        settings=server_settings,
        closers=[decoder.close],
    )
