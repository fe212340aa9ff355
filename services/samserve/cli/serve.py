"""``samserve embedding`` and ``samserve decoder``: one service until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

from samserve.compose import start_decoder, start_embedding
from samserve.config import (
    DecoderSettings,
    EmbedderSettings,
    EncoderSettings,
    Limits,
    ModelSettings,
    ServerSettings,
    StoreSettings,
)
from samserve.core.encoder import Encoder
from samserve.core.errors import ConfigError, InvalidInput
from samserve.core.models import ALL, DECODER, SHIPPED_TINY, LoadedModel, load_model
from samserve.core.variants import family_of
from samserve.rpc.server import StopSignal, drain

log = logging.getLogger(__name__)


def load(settings: ModelSettings, parts: str = ALL) -> LoadedModel:
    """Load the configured model (``parts="decoder"``: without its image encoder); a checkpoint
    that cannot be used is a ConfigError."""
    try:
        model = load_model(settings.variant, settings.checkpoint, settings.seed, parts)
    except InvalidInput as e:
        raise ConfigError(f"{ModelSettings.flag('checkpoint')}: {e}") from None
    # The expected id is the weights' (``samserve checkpoint id``), before the encoder dtype.
    if settings.expect_model_id and model.model_id != settings.expect_model_id:
        raise ConfigError(
            f"{ModelSettings.flag('expect_model_id')}: the weights loaded from {model.source} are "
            f"{model.model_id}, not {settings.expect_model_id}"
        )
    model = dataclasses.replace(model, encoder_dtype=settings.encoder_dtype)
    log.info("model %s (%s) from %s", model.variant, model.model_id, model.source)
    if model.variant == "tiny" and model.source == "shipped":
        log.info("tiny's shipped weights know only toy shapes on dark backgrounds")
    return model


def resolved_checkpoint(model: LoadedModel) -> str:
    """The checkpoint argument that makes another process load exactly ``model``'s weights."""
    if model.source.startswith("random"):
        return "random"
    return str(SHIPPED_TINY) if model.source == "shipped" else model.source


def triton_encoder(settings: EncoderSettings, model: LoadedModel, url: str) -> Encoder:
    """A Triton encoder client that accepts only embeddings of ``model``'s id (tritonclient is
    an optional dependency: imported here)."""
    from samserve.core.triton_encoder import Sam2TritonEncoder, TritonEncoder

    # A SAM 2 model's Triton model takes the image resized in float and returns three tensors.
    cls = Sam2TritonEncoder if family_of(model.variant) == "sam2" else TritonEncoder
    return cls(
        url,
        settings.model_name(model.variant),
        settings.triton_timeout,
        expect_model_id=model.model_id,
        keepalive=settings.triton_keepalive,
        channel_age=settings.triton_channel_age,
        tls_ca=settings.triton_tls_ca,
        tls_cert=settings.triton_tls_cert,
        tls_key=settings.triton_tls_key,
    )


async def serve(ns: argparse.Namespace) -> None:
    """Run the service ``ns.command`` names until a signal, then drain it."""
    model_settings = ModelSettings.from_args(ns)
    store = StoreSettings.from_args(ns)
    limits = Limits.from_args(ns)
    server = ServerSettings.from_args(ns)
    enc = EncoderSettings.from_args(ns)
    if enc.kind == "triton" and not enc.triton_url:
        raise ConfigError("--triton-url: required with --encoder triton")
    if (
        enc.kind != "triton"
        and model_settings.encoder_dtype != "float32"
        and (ns.command == "embedding")
    ):
        raise ConfigError(
            f"{ModelSettings.flag('encoder_dtype')}: the in-process encoder computes in float32"
        )
    # A decoder, and an embedding service whose encoder is Triton, never run the image encoder:
    # they load the prompt encoder and mask decoder only (the model id is still the whole one).
    local = ns.command == "embedding" and enc.kind != "triton"
    model = await asyncio.to_thread(load, model_settings, ALL if local else DECODER)
    if ns.command == "embedding":
        encoder = (
            triton_encoder(enc, model, enc.triton_url)
            if enc.kind == "triton" and enc.triton_url
            else None
        )
        service = await start_embedding(
            model, store, limits, server, encoder, EmbedderSettings.from_args(ns)
        )
    else:
        service = await start_decoder(model, store, limits, server, DecoderSettings.from_args(ns))
    stop = StopSignal()
    log.info("%s serving on %s, metrics %s", service.name, service.address, service.metrics_url)
    try:
        await stop.wait()
    finally:
        await drain([service], server.grace)
