"""Process entry points behind the CLI: one service, or the whole local stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from samserve.app import start_decoder, start_embedding
from samserve.config import Limits, ModelSettings, ServerSettings, StoreSettings
from samserve.core.models import load_model
from samserve.grpc.server import RunningService, drain, wait_for_signal
from samserve.stack import RedisProcess

log = logging.getLogger(__name__)


def _load(ns: argparse.Namespace) -> object:
    m = ModelSettings.from_args(ns)
    model = load_model(m.variant, m.checkpoint, m.seed)
    log.info("model %s (%s) from %s", model.variant, model.model_id, model.source)
    if model.variant == "tiny" and model.source == "shipped":
        log.info("tiny's shipped weights know only toy shapes on dark backgrounds")
    return model


async def single(ns: argparse.Namespace) -> None:
    """``samserve embedding`` / ``samserve decoder``: one service until SIGINT/SIGTERM."""
    store = StoreSettings.from_args(ns)
    limits = Limits.from_args(ns)
    server = ServerSettings(host=ns.host, port=ns.port, metrics_port=ns.metrics_port,
                            grace_seconds=ns.grace)  # fmt: skip
    model = await asyncio.to_thread(_load, ns)
    start = start_embedding if ns.command == "embedding" else start_decoder
    service = await start(model, store, limits, server)  # type: ignore[arg-type]
    log.info("%s serving on %s, metrics %s", service.name, service.address, service.metrics_url)
    try:
        await wait_for_signal()
    finally:
        await drain([service], server.grace_seconds)


async def up(ns: argparse.Namespace) -> None:
    """``samserve up``: Redis (unless given), embedding and decoder; one JSON ready line."""
    limits = Limits.from_args(ns)
    StoreSettings.from_args(ns, redis_url="redis://placeholder")  # validate before any work
    model = await asyncio.to_thread(_load, ns)
    redis = None if ns.redis_url else await asyncio.to_thread(RedisProcess.start)
    services: list[RunningService] = []
    try:
        store = StoreSettings.from_args(ns, redis_url=redis.url if redis else ns.redis_url)
        services.append(
            await start_embedding(
                model,  # type: ignore[arg-type]
                store,
                limits,
                ServerSettings(ns.host, ns.embedding_port, ns.embedding_metrics_port, ns.grace),
            )
        )
        services.append(
            await start_decoder(
                model,  # type: ignore[arg-type]
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
            "model": model.model_id,  # type: ignore[attr-defined]
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await wait_for_signal()
    finally:
        # Services first (they drain and close their Redis pools), then the Redis child.
        await drain(services, ns.grace)
        if redis is not None:
            await asyncio.to_thread(redis.stop)
