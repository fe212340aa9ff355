"""``samserve up``: a private Redis (and Triton), both services, one JSON ready line on stdout."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import sys
import urllib.parse
from contextlib import AsyncExitStack
from typing import Any

from samserve.cli.serve import load, resolved_checkpoint, triton_encoder
from samserve.compose import start_decoder, start_embedding
from samserve.config import (
    DecoderSettings,
    EmbedderSettings,
    EncoderSettings,
    Limits,
    ModelSettings,
    PrivateTritonSettings,
    ServerSettings,
    StoreSettings,
    UpSettings,
)
from samserve.core.encoder import Encoder
from samserve.core.errors import ConfigError
from samserve.core.models import ALL, DECODER, LoadedModel
from samserve.procs.redis import RedisProcess
from samserve.rpc.server import RunningService, StopSignal, drain

log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for the ready line and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


async def _private_redis(stack: AsyncExitStack) -> str:
    try:
        redis = await asyncio.to_thread(RedisProcess.start)
    except RuntimeError as e:
        raise ConfigError(f"--redis-url: not given, and no private Redis: {e}") from None
    stack.push_async_callback(asyncio.to_thread, redis.stop)
    return redis.url


def _private_triton_tls(
    server: ServerSettings, enc: EncoderSettings
) -> tuple[Any, EncoderSettings]:
    """With ``--tls-*``, the private Triton serves TLS with the services' certificate (mutual
    with ``--tls-client-ca``); its client trusts ``--triton-tls-ca`` or else the client CA, and
    presents ``--triton-tls-cert/key`` or else the services' own certificate."""
    from samserve.procs.triton import TritonTls

    if server.tls_cert is None or server.tls_key is None:
        return None, enc
    trust = enc.triton_tls_ca or server.tls_client_ca
    if trust is None:
        raise ConfigError(
            "--triton-tls-ca: required with --tls-cert and a private Triton (the CA that "
            "signed --tls-cert)"
        )
    client = dataclasses.replace(
        enc,
        triton_tls_ca=trust,
        triton_tls_cert=enc.triton_tls_cert or server.tls_cert,
        triton_tls_key=enc.triton_tls_key or server.tls_key,
    )
    return TritonTls(server.tls_cert, server.tls_key, server.tls_client_ca), client


async def _triton(
    stack: AsyncExitStack,
    enc: EncoderSettings,
    private: PrivateTritonSettings,
    server: ServerSettings,
    model: LoadedModel,
    seed: int,
) -> tuple[Encoder, dict[str, Any]]:
    """The Triton encoder client, starting a private tritonserver unless a URL is given."""
    url, metrics = enc.triton_url, None
    if url is None:
        from pathlib import Path

        from samserve.procs.triton import TritonModelOptions, TritonProcess

        tls, enc = _private_triton_tls(server, enc)

        options = TritonModelOptions(
            model.variant,
            resolved_checkpoint(model),
            seed=seed,
            device=private.triton_device,
            dtype=model.encoder_dtype,  # what the model id says (--encoder-dtype)
            repository=Path(private.triton_repository) if private.triton_repository else None,
        )
        try:
            triton = await asyncio.to_thread(
                functools.partial(TritonProcess.start, options, tls=tls)
            )
        except RuntimeError as e:
            log.error("%s", e)  # the whole story, with the end of tritonserver's log
            first = str(e).splitlines()[0]
            raise ConfigError(
                f"--encoder triton: the private tritonserver failed: {first}"
            ) from None
        stack.push_async_callback(asyncio.to_thread, triton.stop)
        url, metrics = triton.grpc_address, triton.metrics_url
    return triton_encoder(enc, model, url), {"grpc": url, "metrics": metrics}


def _ready_line(
    emb: RunningService,
    dec: RunningService,
    redis_url: str,
    model: LoadedModel,
    extra: dict[str, Any],
) -> str:
    ready = {
        "embedding": emb.address,
        "decoder": dec.address,
        "redis": redact(redis_url),
        "metrics": {"embedding": emb.metrics_url, "decoder": dec.metrics_url},
        **extra,
        "model": model.model_id,
    }
    return json.dumps(ready)


async def up(ns: argparse.Namespace) -> None:
    """Start everything, print the ready line, wait for a signal, stop in order.

    Stop order: the services drain first (they close their own clients), then Triton, then
    Redis (the exit stack unwinds in reverse start order).
    """
    model_settings = ModelSettings.from_args(ns)
    limits = Limits.from_args(ns)
    enc = EncoderSettings.from_args(ns)
    private = PrivateTritonSettings.from_args(ns)
    server = ServerSettings.from_args(ns)
    ports = UpSettings.from_args(ns)
    StoreSettings.from_args(ns, redis_url=ns.redis_url or "redis://placeholder")  # validate now
    parts = DECODER if enc.kind == "triton" else ALL  # Triton runs the image encoder
    model = await asyncio.to_thread(load, model_settings, parts)
    async with AsyncExitStack() as stack:
        redis_url = ns.redis_url or await _private_redis(stack)
        store = StoreSettings.from_args(ns, redis_url=redis_url)
        encoder: Encoder | None = None
        extra: dict[str, Any] = {}
        if enc.kind == "triton":
            encoder, triton = await _triton(stack, enc, private, server, model, model_settings.seed)
            extra["triton"] = triton
        services: list[RunningService] = []
        stack.push_async_callback(drain, services, server.grace)
        emb_settings = ports.server("embedding", server)
        services.append(
            await start_embedding(
                model, store, limits, emb_settings, encoder, EmbedderSettings.from_args(ns)
            )
        )
        dec_settings = ports.server("decoder", server)
        services.append(
            await start_decoder(model, store, limits, dec_settings, DecoderSettings.from_args(ns))
        )
        emb, dec = services
        if server.tls:
            extra["tls"] = True
        stop = StopSignal()
        sys.stdout.write(_ready_line(emb, dec, redis_url, model, extra) + "\n")
        sys.stdout.flush()
        await stop.wait()
