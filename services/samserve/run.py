"""Process entry points behind the CLI: one service, or the whole local stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from samserve.app import start_decoder, start_embedding
from samserve.config import (
    ConfigError,
    EncoderSettings,
    Limits,
    ModelSettings,
    ServerSettings,
    StoreSettings,
)
from samserve.core.encoder import Encoder
from samserve.core.models import SHIPPED_TINY, LoadedModel, load_model
from samserve.grpc.server import RunningService, drain, wait_for_signal
from samserve.stack import RedisProcess

log = logging.getLogger(__name__)


def _load(settings: ModelSettings) -> LoadedModel:
    model = load_model(settings.variant, settings.checkpoint, settings.seed)
    log.info("model %s (%s) from %s", model.variant, model.model_id, model.source)
    if model.variant == "tiny" and model.source == "shipped":
        log.info("tiny's shipped weights know only toy shapes on dark backgrounds")
    return model


def resolved_checkpoint(model: LoadedModel) -> str:
    """The checkpoint argument that makes another process load exactly ``model``'s weights."""
    if model.source.startswith("random"):
        return "random"
    return str(SHIPPED_TINY) if model.source == "shipped" else model.source


def triton_encoder(settings: EncoderSettings, variant: str, url: str) -> Encoder:
    """A Triton encoder client (tritonclient is an optional dependency: imported here)."""
    from samserve.core.triton_encoder import TritonEncoder

    return TritonEncoder(url, settings.model_name(variant), settings.triton_timeout)


async def single(ns: argparse.Namespace) -> None:
    """``samserve embedding`` / ``samserve decoder``: one service until SIGINT/SIGTERM."""
    model_settings = ModelSettings.from_args(ns)
    store = StoreSettings.from_args(ns)
    limits = Limits.from_args(ns)
    server = ServerSettings(host=ns.host, port=ns.port, metrics_port=ns.metrics_port,
                            grace_seconds=ns.grace)  # fmt: skip
    enc = EncoderSettings.from_args(ns) if ns.command == "embedding" else EncoderSettings()
    if enc.kind == "triton" and not enc.triton_url:
        raise ConfigError("--triton-url is required with --encoder triton")
    model = await asyncio.to_thread(_load, model_settings)
    if ns.command == "embedding":
        encoder = (
            triton_encoder(enc, model.variant, enc.triton_url)
            if enc.kind == "triton" and enc.triton_url
            else None
        )
        service = await start_embedding(model, store, limits, server, encoder)
    else:
        service = await start_decoder(model, store, limits, server)
    log.info("%s serving on %s, metrics %s", service.name, service.address, service.metrics_url)
    try:
        await wait_for_signal()
    finally:
        await drain([service], server.grace_seconds)


async def up(ns: argparse.Namespace) -> None:
    """``samserve up``: Redis and Triton (unless given), both services; one JSON ready line."""
    model_settings = ModelSettings.from_args(ns)
    limits = Limits.from_args(ns)
    enc = EncoderSettings.from_args(ns)
    StoreSettings.from_args(ns, redis_url="redis://placeholder")  # validate before any work
    model = await asyncio.to_thread(_load, model_settings)
    redis = None if ns.redis_url else await asyncio.to_thread(RedisProcess.start)
    triton: Any = None
    services: list[RunningService] = []
    try:
        store = StoreSettings.from_args(ns, redis_url=redis.url if redis else ns.redis_url)
        encoder = None
        ready: dict[str, Any] = {}
        if enc.kind == "triton":
            url = enc.triton_url
            if url is None:
                from samserve.triton_server import TritonProcess

                triton = await asyncio.to_thread(
                    TritonProcess.start,
                    enc.triton_repository,
                    model.variant,
                    resolved_checkpoint(model),
                    seed=model_settings.seed,
                    device=enc.triton_device,
                )
                url = triton.grpc_address
            encoder = triton_encoder(enc, model.variant, url)
            ready["triton"] = {"grpc": url, "metrics": triton.metrics_url if triton else None}
        services.append(
            await start_embedding(
                model,
                store,
                limits,
                ServerSettings(ns.host, ns.embedding_port, ns.embedding_metrics_port, ns.grace),
                encoder,
            )
        )
        services.append(
            await start_decoder(
                model,
                store,
                limits,
                ServerSettings(ns.host, ns.decoder_port, ns.decoder_metrics_port, ns.grace),
            )
        )
        emb, dec = services
        ready = {
            "embedding": emb.address,
            "decoder": dec.address,
            "redis": store.redis_url,
            "metrics": {"embedding": emb.metrics_url, "decoder": dec.metrics_url},
            **ready,
            "model": model.model_id,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await wait_for_signal()
    finally:
        # Services first (they drain and close their clients), then Triton, then Redis.
        await drain(services, ns.grace)
        if triton is not None:
            await asyncio.to_thread(triton.stop)
        if redis is not None:
            await asyncio.to_thread(redis.stop)
