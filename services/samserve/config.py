"""Settings, parsed once at the edge (CLI flags with ``SAMSERVE_*`` environment fallbacks).

| flag | environment | default |
|---|---|---|
| ``--model`` | ``SAMSERVE_MODEL`` | ``tiny`` |
| ``--checkpoint`` | ``SAMSERVE_CHECKPOINT`` | shipped weights for tiny, else random |
| ``--seed`` | ``SAMSERVE_SEED`` | ``0`` |
| ``--redis-url`` | ``SAMSERVE_REDIS_URL`` | ``redis://127.0.0.1:6379/0`` |
| ``--cache-ttl`` | ``SAMSERVE_CACHE_TTL`` | ``86400`` seconds (0 = no expiry) |
| ``--store-dtype`` | ``SAMSERVE_STORE_DTYPE`` | ``float16`` |
| ``--max-image-bytes`` | ``SAMSERVE_MAX_IMAGE_BYTES`` | 32 MiB |
| ``--max-pixels`` | ``SAMSERVE_MAX_PIXELS`` | 50,000,000 |
| ``--lru-entries`` | ``SAMSERVE_LRU_ENTRIES`` | ``32`` (about 14 MiB each) |
| ``--grace`` | ``SAMSERVE_GRACE`` | ``10`` seconds |
| ``--encoder`` | ``SAMSERVE_ENCODER`` | ``local`` (in-process) or ``triton`` |
| ``--triton-url`` | ``SAMSERVE_TRITON_URL`` | Triton gRPC ``host:port`` (``up``: own server) |
| ``--triton-model`` | ``SAMSERVE_TRITON_MODEL`` | ``sam_image_encoder_<variant>`` |
| ``--triton-timeout`` | ``SAMSERVE_TRITON_TIMEOUT`` | ``60`` seconds per encode (queue included) |
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from samserve.core.models import VARIANTS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag."""


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(f"SAMSERVE_{name}", default)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Which model to run and where its weights come from."""

    variant: str = "tiny"
    checkpoint: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"--model must be one of {', '.join(VARIANTS)}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
        g = parser.add_argument_group("model")
        g.add_argument("--model", default=_env(env, "MODEL", "tiny"), choices=VARIANTS)
        g.add_argument(
            "--checkpoint",
            default=env.get("SAMSERVE_CHECKPOINT"),
            help="official .pth state dict; 'random' for seeded random weights "
            "(default: the shipped shape-trained weights for tiny, random for the others)",
        )
        g.add_argument("--seed", type=int, default=int(_env(env, "SEED", "0")))

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ModelSettings:
        return cls(variant=ns.model, checkpoint=ns.checkpoint, seed=ns.seed)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where embeddings are stored and for how long."""

    redis_url: str = DEFAULT_REDIS_URL
    ttl_seconds: int = 86400
    dtype: str = "float16"
    timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("--redis-url must start with redis://, rediss:// or unix://")
        if self.ttl_seconds < 0:
            raise ConfigError("--cache-ttl must be >= 0")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError("--store-dtype must be float16 or float32")

    @staticmethod
    def add_cli_args(
        parser: argparse.ArgumentParser, env: Mapping[str, str], *, url_default: bool = True
    ) -> None:
        g = parser.add_argument_group("embedding store")
        g.add_argument(
            "--redis-url",
            default=env.get("SAMSERVE_REDIS_URL", DEFAULT_REDIS_URL if url_default else None),
        )
        g.add_argument("--cache-ttl", type=int, default=int(_env(env, "CACHE_TTL", "86400")))
        g.add_argument(
            "--store-dtype",
            default=_env(env, "STORE_DTYPE", "float16"),
            choices=("float16", "float32"),
        )

    @classmethod
    def from_args(cls, ns: argparse.Namespace, redis_url: str | None = None) -> StoreSettings:
        return cls(
            redis_url=redis_url or ns.redis_url,
            ttl_seconds=ns.cache_ttl,
            dtype=ns.store_dtype,
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits: anything over them is RESOURCE_EXHAUSTED."""

    max_image_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_prompts: int = 64
    max_points: int = 64
    lru_entries: int = 32

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_pixels", "max_prompts", "max_points"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")

    @property
    def max_message_bytes(self) -> int:
        """gRPC receive limit: one image plus room for the envelope."""
        return self.max_image_bytes + 1024 * 1024

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
        g = parser.add_argument_group("limits")
        g.add_argument(
            "--max-image-bytes",
            type=int,
            default=int(_env(env, "MAX_IMAGE_BYTES", str(32 * 1024 * 1024))),
        )
        g.add_argument("--max-pixels", type=int, default=int(_env(env, "MAX_PIXELS", "50000000")))
        g.add_argument("--lru-entries", type=int, default=int(_env(env, "LRU_ENTRIES", "32")))

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Limits:
        return cls(
            max_image_bytes=ns.max_image_bytes,
            max_pixels=ns.max_pixels,
            lru_entries=ns.lru_entries,
        )


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where a service listens and how it drains."""

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0
    grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in 0..65535")
        if self.grace_seconds < 0:
            raise ConfigError("--grace must be >= 0")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def environ() -> Mapping[str, str]:
    """The process environment (read by ``main()`` only, never at import)."""
    return os.environ


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """Where the image encoder runs: in this process, or on a Triton Inference Server."""

    kind: str = "local"
    triton_url: str | None = None
    triton_model: str | None = None
    triton_timeout: float = 60.0
    triton_repository: str | None = None
    triton_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in ("local", "triton"):
            raise ConfigError("--encoder must be local or triton")
        if self.triton_timeout <= 0:
            raise ConfigError("--triton-timeout must be > 0")
        if self.triton_device not in ("cpu", "cuda"):
            raise ConfigError("--triton-device must be cpu or cuda")

    def model_name(self, variant: str) -> str:
        """The Triton model serving ``variant``."""
        return self.triton_model or f"sam_image_encoder_{variant}"

    @staticmethod
    def add_cli_args(
        parser: argparse.ArgumentParser, env: Mapping[str, str], *, private: bool
    ) -> None:
        g = parser.add_argument_group("encoder")
        g.add_argument(
            "--encoder", choices=("local", "triton"), default=_env(env, "ENCODER", "local")
        )
        g.add_argument(
            "--triton-url",
            default=env.get("SAMSERVE_TRITON_URL"),
            help="Triton gRPC host:port"
            + (" (default with --encoder triton: start a private tritonserver)" if private else ""),
        )
        g.add_argument("--triton-model", default=env.get("SAMSERVE_TRITON_MODEL"))
        g.add_argument(
            "--triton-timeout", type=float, default=float(_env(env, "TRITON_TIMEOUT", "60"))
        )
        if private:
            g.add_argument("--triton-repository", help="model repository (default: triton_models/)")
            g.add_argument("--triton-device", choices=("cpu", "cuda"), default="cpu")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> EncoderSettings:
        return cls(
            kind=ns.encoder,
            triton_url=ns.triton_url,
            triton_model=ns.triton_model,
            triton_timeout=ns.triton_timeout,
            triton_repository=getattr(ns, "triton_repository", None),
            triton_device=getattr(ns, "triton_device", "cpu"),
        )
