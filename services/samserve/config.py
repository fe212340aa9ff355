"""Settings: every flag of every command, its environment twin and its default, in one place.

Each settings class is a frozen dataclass whose fields are declared with :func:`setting`. The
field's name is the argparse destination, ``--field-name`` the flag (unless given) and
``SAMSERVE_FIELD_NAME`` the environment variable. :meth:`Settings.add_cli_args` adds a class's
flags to a parser (a flag wins over its variable, the variable over the default), and
:meth:`Settings.from_args` builds the validated object. Invalid values raise
:class:`~samserve.core.errors.ConfigError` with a one-line message naming the flag.

The reference table of every command's flags is generated from the parser
(``python -m samserve.cli.docs > docs/configuration.md``; a test keeps the file current).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from samserve.core.errors import ConfigError
from samserve.core.variants import ENCODER_DTYPES, VARIANTS, triton_model_name

ENV_PREFIX = "SAMSERVE_"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: ``samserve status``: the namespace and label of deploy/base (kustomization.yaml).
DEFAULT_NAMESPACE = "samserve"
DEFAULT_SELECTOR = "app.kubernetes.io/part-of=samserve"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class Option:
    """How one settings field appears on the command line and in the environment."""

    help: str
    flag: str | None = None
    env: bool | str = True
    choices: Sequence[str] | None = None
    metavar: str | None = None
    short: str | None = None


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    env: bool | str = True,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    short: str | None = None,
) -> Any:
    """A settings field: its default and how it is set (see the module docstring).

    ``env`` is True for the variable named after the flag, a string for another name, False for
    none.
    """
    return field(
        default=default,
        metadata={"option": Option(help, flag, env, choices, metavar, short)},
    )


def environ() -> Mapping[str, str]:
    """The process environment (read by ``main()`` only, never at import)."""
    return os.environ


def parse_value(text: str, kind: type, where: str) -> Any:
    """``text`` as a ``kind`` (int, float, bool, str), or ConfigError naming ``where``."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {text!r}") from None


class Settings:
    """Mixin of the settings dataclasses: flags, environment twins, construction."""

    #: Title of the class's argument group in ``--help``.
    title: ClassVar[str] = "options"

    @classmethod
    def options(cls) -> list[tuple[dataclasses.Field[Any], Option, type]]:
        """(field, option, value type) of every field that is a flag."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            option = f.metadata.get("option")
            if option is not None:
                out.append((f, option, _scalar(hints[f.name])))
        return out

    @classmethod
    def flag(cls, name: str) -> str:
        """The flag of field ``name`` (for messages)."""
        for f, option, _ in cls.options():
            if f.name == name:
                return option.flag or "--" + name.replace("_", "-")
        raise KeyError(name)

    @classmethod
    def env_var(cls, name: str) -> str | None:
        """The environment variable of field ``name`` (None when it has none)."""
        for f, option, _ in cls.options():
            if f.name == name:
                if isinstance(option.env, str):
                    return option.env
                if option.env:
                    return ENV_PREFIX + cls.flag(name).lstrip("-").replace("-", "_").upper()
                return None
        raise KeyError(name)

    @classmethod
    def add_cli_args(
        cls,
        parser: argparse.ArgumentParser,
        env: Mapping[str, str],
        *,
        defaults: Mapping[str, Any] | None = None,
        skip: Sequence[str] = (),
    ) -> None:
        """Add this class's flags to ``parser``.

        Args:
            parser: the (sub)command's parser.
            env: the environment; a ``SAMSERVE_*`` variable replaces a field's default.
            defaults: per-command defaults that replace the class's (e.g. the decoder's port).
            skip: fields this command does not take.

        Raises:
            ConfigError: an environment variable holds a value of the wrong type.
        """
        group = parser.add_argument_group(cls.title)
        for f, option, kind in cls.options():
            if f.name in skip:
                continue
            flag = cls.flag(f.name)
            default = (defaults or {}).get(f.name, f.default)
            var = cls.env_var(f.name)
            if var is not None and var in env:
                default = parse_value(env[var], kind, f"{var} (for {flag})")
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": option.help}
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _argparse_type(kind, flag)
                if option.choices is not None:
                    kwargs["choices"] = option.choices
                if option.metavar is not None:
                    kwargs["metavar"] = option.metavar
            names = [option.short, flag] if option.short else [flag]
            action = group.add_argument(*names, **kwargs)
            action.env_var = var  # type: ignore[attr-defined]  # read by the docs generator

    @classmethod
    def from_args(cls, ns: argparse.Namespace, **overrides: Any) -> Self:
        """The validated settings from parsed flags (fields a command lacks keep defaults)."""
        given = {f.name: getattr(ns, f.name) for f, _, _ in cls.options() if hasattr(ns, f.name)}
        return cls(**{**given, **overrides})


def _scalar(hint: Any) -> type:
    """The value type of an annotation: ``int``, ``float``, ``bool`` or ``str``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    if kind not in (int, float, bool, str):
        raise TypeError(f"unsupported settings type {hint!r}")
    return typing.cast(type, kind)


def _argparse_type(kind: type, flag: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def _check(condition: bool, cls: type[Settings], name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{cls.flag(name)}: {message}")


def _readable(cls: type[Settings], name: str, path: str | None) -> None:
    """A file setting must name a readable file (checked at start, not at the first call)."""
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{cls.flag(name)}: cannot read {path} ({e.strerror or e})") from None


def _check_token_file(path: str) -> None:
    """The token file exists, is readable, is not world-readable and holds a token."""
    from samserve.core.tokens import TokenError, read_tokens

    flag = ServerSettings.flag("auth_tokens")
    _readable(ServerSettings, "auth_tokens", path)
    if os.stat(path).st_mode & stat.S_IROTH:
        raise ConfigError(f"{flag}: {path} is world-readable (chmod o-r)")
    try:
        read_tokens(path)
    except TokenError as e:
        raise ConfigError(f"{flag}: {e}") from None


@dataclass(frozen=True, slots=True)
class LogSettings(Settings):
    """Logging of every command."""

    title: ClassVar[str] = "logging"
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        _check(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            LogSettings,
            "log_level",
            "must be DEBUG, INFO, WARNING or ERROR",
        )


@dataclass(frozen=True, slots=True)
class ModelSettings(Settings):
    """Which model to run and where its weights come from."""

    title: ClassVar[str] = "model"
    variant: str = setting("tiny", "model variant", flag="--model", choices=VARIANTS)
    checkpoint: str | None = setting(
        None,
        "official .pth state dict (SAM 2: the official .pt); 'random' for seeded random "
        "weights (default: the shipped shape-trained weights for tiny, random weights for the "
        "others)",
        metavar="PATH",
    )
    seed: int = setting(0, "seed of random weights")
    expect_model_id: str | None = setting(
        None,
        "refuse to start unless the loaded weights have this model id (variant-checksum), so "
        "every replica provably serves the same weights",
        metavar="ID",
    )
    encoder_dtype: str = setting(
        "float32",
        "compute dtype of the image encoder that makes the embeddings (Triton's dtype "
        "parameter): part of the model id, so bf16 and fp32 embeddings never share a key; the "
        "decoders must name the same one. The in-process encoder computes in float32 only",
        choices=ENCODER_DTYPES,
    )

    def __post_init__(self) -> None:
        _check(self.variant in VARIANTS, ModelSettings, "variant", f"one of {', '.join(VARIANTS)}")
        _check(
            self.encoder_dtype in ENCODER_DTYPES,
            ModelSettings,
            "encoder_dtype",
            f"one of {', '.join(ENCODER_DTYPES)}",
        )
        if self.checkpoint not in (None, "random"):
            _check(
                os.path.isfile(str(self.checkpoint)),
                ModelSettings,
                "checkpoint",
                f"no such file: {self.checkpoint}",
            )


@dataclass(frozen=True, slots=True)
class StoreSettings(Settings):
    """Where embeddings are stored and for how long."""

    title: ClassVar[str] = "embedding store"
    redis_url: str = setting(
        DEFAULT_REDIS_URL,
        "Redis holding the embeddings: redis://, rediss://, unix://, or redis+cluster://host:port "
        "(rediss+cluster:// with TLS) naming one seed node of a Redis Cluster",
    )
    ttl_seconds: int = setting(
        86400, "expiry of each stored embedding, seconds (0 = never)", flag="--cache-ttl"
    )
    dtype: str = setting(
        "float16",
        "storage dtype of embeddings",
        flag="--store-dtype",
        choices=("float16", "float32"),
    )
    redis_timeout: float = setting(2.0, "Redis connect and read timeout, seconds")
    redis_tls_ca: str | None = setting(
        None, "CA the Redis server's certificate chains to (rediss://)", metavar="PATH"
    )
    redis_tls_cert: str | None = setting(
        None, "client certificate for Redis (tls-auth-clients)", metavar="PATH"
    )
    redis_tls_key: str | None = setting(None, "private key of --redis-tls-cert", metavar="PATH")

    def __post_init__(self) -> None:
        _check(
            self.redis_url.startswith(REDIS_SCHEMES),
            StoreSettings,
            "redis_url",
            "must start with " + ", ".join(REDIS_SCHEMES),
        )
        _check(self.ttl_seconds >= 0, StoreSettings, "ttl_seconds", "must be >= 0")
        _check(self.dtype in ("float16", "float32"), StoreSettings, "dtype", "float16 or float32")
        _check(self.redis_timeout > 0, StoreSettings, "redis_timeout", "must be > 0")
        tls_files = (self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)
        _check(
            not any(tls_files) or self.redis_url.startswith("rediss"),
            StoreSettings,
            "redis_url",
            "--redis-tls-* files need a rediss:// URL",
        )
        _check(
            (self.redis_tls_cert is None) == (self.redis_tls_key is None),
            StoreSettings,
            "redis_tls_key" if self.redis_tls_cert else "redis_tls_cert",
            "--redis-tls-cert and --redis-tls-key go together",
        )
        for name in ("redis_tls_ca", "redis_tls_cert", "redis_tls_key"):
            _readable(StoreSettings, name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class Limits(Settings):
    """Request limits: anything over them is RESOURCE_EXHAUSTED."""

    title: ClassVar[str] = "limits"
    max_image_bytes: int = setting(32 * 1024 * 1024, "largest accepted image file, bytes")
    max_pixels: int = setting(
        50_000_000, "largest accepted image, pixels (checked from the header, before decoding)"
    )
    max_prompts: int = setting(64, "most prompts in one Segment call")
    max_points: int = setting(64, "most points in one prompt")
    max_response_bytes: int = setting(
        64 * 1024 * 1024,
        "largest Segment answer, bytes (refused before any work when it is known to be over)",
    )
    queue_full_wait: float = setting(
        0.2,
        "seconds a call that finds its admission queue full waits for room before it is "
        "refused (paces callers that retry at once)",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_image_bytes",
            "max_pixels",
            "max_prompts",
            "max_points",
            "max_response_bytes",
        ):
            _check(getattr(self, name) > 0, Limits, name, "must be > 0")
        _check(0 <= self.queue_full_wait <= 10, Limits, "queue_full_wait", "must be 0..10")

    @property
    def max_message_bytes(self) -> int:
        """gRPC receive limit: one image plus room for the envelope."""
        return self.max_image_bytes + 1024 * 1024


@dataclass(frozen=True, slots=True)
class DecoderSettings(Settings):
    """How much the decoder service does at once, and in what memory."""

    title: ClassVar[str] = "decoder"
    decoder_workers: int = setting(
        0,
        "prompts decoded at once, one thread each (0: one per CPU of the pod's CPU limit, read "
        "from the cgroup's cpu.max or cpu.cfs_quota_us, not the host's cores)",
    )
    decoder_threads: int = setting(
        0,
        "intra-op threads of each decoder worker; 0: adaptive, the CPU limit divided by the calls "
        "running (a lone call gets every CPU, a full pool one thread per call: measured faster "
        "than a fixed 1 both alone and under load)",
    )
    decoder_runtime: str = setting(
        "auto",
        "where the SAM 1 mask decoder runs: onnxruntime (the folded decoder exported at start, in "
        "memory; about 0.75x torch's time), torch, or auto (onnxruntime when installed, else "
        "torch); SAM 2 models always run torch",
        choices=("auto", "onnxruntime", "torch"),
    )
    work_bytes: int = setting(
        256 * 1024 * 1024,
        "memory budget of one decoder job's full-resolution work (masks are upsampled and "
        "encoded a few at a time within it), bytes",
    )
    lru_entries: int = setting(
        32, "decoded embeddings a decoder keeps in memory (~14 MiB each; ~26 MiB for SAM 2.1)"
    )
    max_queued_prompts: int = setting(
        16, "prompts allowed to wait for a decoder thread; past it, RESOURCE_EXHAUSTED at once"
    )
    max_queue_seconds: float = setting(
        0.3,
        "longest expected wait for a decoder thread (queued prompts x a prompt's moving-average "
        "time / threads); past it, RESOURCE_EXHAUSTED at once",
    )
    max_queued_everything: int = setting(
        1, "SegmentEverything calls allowed to wait while one runs; past it, RESOURCE_EXHAUSTED"
    )
    max_everything_work: int = setting(
        2 * 10**11,
        "largest SegmentEverything: grid points x 3 masks x pixels of their crop, over all "
        "crops (default admits a 32x32 grid with one crop layer on a 24 MP photo)",
    )

    def __post_init__(self) -> None:
        for name in ("work_bytes", "max_everything_work", "max_queue_seconds"):
            _check(getattr(self, name) > 0, DecoderSettings, name, "must be > 0")
        for name in (
            "decoder_workers",
            "decoder_threads",
            "lru_entries",
            "max_queued_prompts",
            "max_queued_everything",
        ):
            _check(getattr(self, name) >= 0, DecoderSettings, name, "must be >= 0")


@dataclass(frozen=True, slots=True)
class EmbedderSettings(Settings):
    """How much the embedding service decodes and encodes at once."""

    title: ClassVar[str] = "embedder"
    max_decode_bytes: int = setting(
        1024 * 1024 * 1024, "memory one image decode may take (about 14 bytes a pixel), bytes"
    )
    decode_slots: int = setting(2, "image decodes running at once")
    encoder_slots: int = setting(
        0, "encoder runs in flight at once (0: 1 in process, 8 on Triton, which batches them)"
    )
    max_queued_encodes: int = setting(
        8, "images allowed to wait for the encoder; past it, RESOURCE_EXHAUSTED at once"
    )
    encode_lease: float = setting(
        10.0,
        "seconds of the Redis lease that makes one replica encode an image while the others "
        "wait for its entry (renewed while encoding; a dead holder's lease is taken over after "
        "it); 0 turns it off",
        metavar="SECONDS",
    )

    def __post_init__(self) -> None:
        for name in ("max_decode_bytes", "decode_slots"):
            _check(getattr(self, name) > 0, EmbedderSettings, name, "must be > 0")
        for name in ("encoder_slots", "max_queued_encodes", "encode_lease"):
            _check(getattr(self, name) >= 0, EmbedderSettings, name, "must be >= 0")


@dataclass(frozen=True, slots=True)
class ServerSettings(Settings):
    """Where a service listens and how it drains."""

    title: ClassVar[str] = "server"
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(0, "gRPC port (0 picks a free one)")
    metrics_port: int = setting(0, "Prometheus /metrics port (0 picks a free one)")
    grace: float = setting(10.0, "seconds in-flight calls get to finish when stopping")
    tls_cert: str | None = setting(
        None, "serve TLS with this certificate chain (PEM; with --tls-key)", metavar="PATH"
    )
    tls_key: str | None = setting(None, "private key of --tls-cert (PEM)", metavar="PATH")
    tls_client_ca: str | None = setting(
        None,
        "also require client certificates signed by this CA (mutual TLS; needs --tls-cert)",
        metavar="PATH",
    )
    auth_tokens: str | None = setting(
        None,
        "require 'authorization: Bearer <token>': one token per line, optionally 'name token', "
        "'#' comments; re-read when it changes; must not be world-readable",
        metavar="PATH",
    )
    health_port: int = setting(
        0,
        "also serve grpc.health.v1 alone, in plaintext, on this port (for the kubelet's gRPC "
        "probe, which cannot speak TLS); 0 = off",
    )
    #: Flag prefix of this service's port flags in ``samserve up`` (``embedding-``), for messages.
    flag_prefix: str = ""

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port", "health_port"):
            _check(0 <= getattr(self, name) <= 65535, ServerSettings, name, "must be 0..65535")
        _check(self.grace >= 0, ServerSettings, "grace", "must be >= 0")
        _check(
            (self.tls_cert is None) == (self.tls_key is None),
            ServerSettings,
            "tls_key" if self.tls_cert else "tls_cert",
            "--tls-cert and --tls-key go together",
        )
        _check(
            self.tls_client_ca is None or self.tls_cert is not None,
            ServerSettings,
            "tls_client_ca",
            "mutual TLS needs --tls-cert and --tls-key",
        )
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            _readable(ServerSettings, name, getattr(self, name))
        if self.auth_tokens is not None:
            _check_token_file(self.auth_tokens)

    @property
    def tls(self) -> bool:
        """Whether the service serves TLS."""
        return self.tls_cert is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def port_flag(self, name: str = "port") -> str:
        """The flag that set ``port`` or ``metrics_port`` for this service."""
        return "--" + self.flag_prefix + name.replace("_", "-")


#: Each service's default ports (``samserve embedding`` / ``samserve decoder``).
SERVICE_PORTS: dict[str, dict[str, int]] = {
    "embedding": {"port": 50051, "metrics_port": 9101},
    "decoder": {"port": 50052, "metrics_port": 9102},
}


@dataclass(frozen=True, slots=True)
class EncoderSettings(Settings):
    """Where the image encoder runs: in this process, or on a Triton Inference Server."""

    title: ClassVar[str] = "encoder"
    kind: str = setting(
        "local", "run the image encoder in process or on Triton", flag="--encoder",
        choices=("local", "triton"),
    )  # fmt: skip
    triton_url: str | None = setting(
        None, "Triton gRPC host:port (samserve up: default starts a private tritonserver)"
    )
    triton_model: str | None = setting(
        None, "Triton model name (default sam_image_encoder_<model>)"
    )
    triton_timeout: float = setting(60.0, "seconds per encode on Triton, queue included")
    triton_tls_ca: str | None = setting(
        None, "speak TLS to Triton, trusting this CA for its certificate", metavar="PATH"
    )
    triton_tls_cert: str | None = setting(
        None, "client certificate for Triton's mutual TLS (with --triton-tls-key)", metavar="PATH"
    )
    triton_tls_key: str | None = setting(None, "private key of --triton-tls-cert", metavar="PATH")
    triton_keepalive: float = setting(
        15.0,
        "seconds between keepalive pings to Triton (a dead endpoint's calls fail after this plus "
        "5 s instead of at their deadline); Triton must permit them: "
        "--grpc-keepalive-permit-without-calls=true "
        "--grpc-http2-min-recv-ping-interval-without-data=<at most this, ms> "
        "--grpc-http2-max-pings-without-data=0; 0 = no pings",
        metavar="SECONDS",
    )
    triton_channel_age: float = setting(
        60.0,
        "seconds after which the Triton channel is replaced by a fresh one (new calls re-resolve "
        "dns:/// and spread over the endpoints now there; calls in flight finish on the old); "
        "0 = never",
        metavar="SECONDS",
    )

    def __post_init__(self) -> None:
        _check(self.kind in ("local", "triton"), EncoderSettings, "kind", "local or triton")
        _check(self.triton_timeout > 0, EncoderSettings, "triton_timeout", "must be > 0")
        for name in ("triton_keepalive", "triton_channel_age"):
            _check(getattr(self, name) >= 0, EncoderSettings, name, "must be >= 0")
        _check(
            (self.triton_tls_cert is None) == (self.triton_tls_key is None),
            EncoderSettings,
            "triton_tls_key" if self.triton_tls_cert else "triton_tls_cert",
            "--triton-tls-cert and --triton-tls-key go together",
        )
        _check(
            self.triton_tls_cert is None or self.triton_tls_ca is not None,
            EncoderSettings,
            "triton_tls_ca",
            "a Triton client certificate needs --triton-tls-ca",
        )
        for name in ("triton_tls_ca", "triton_tls_cert", "triton_tls_key"):
            _readable(EncoderSettings, name, getattr(self, name))

    def model_name(self, variant: str) -> str:
        """The Triton model serving ``variant``."""
        return self.triton_model or triton_model_name(variant)


@dataclass(frozen=True, slots=True)
class PrivateTritonSettings(Settings):
    """The private tritonserver ``samserve up --encoder triton`` starts."""

    title: ClassVar[str] = "private triton (samserve up)"
    triton_repository: str | None = setting(
        None, "model repository to copy (default: triton_models/ of this checkout)", metavar="DIR"
    )
    triton_device: str = setting(
        "cpu", "device of the private Triton's encoder", choices=("cpu", "cuda")
    )

    def __post_init__(self) -> None:
        _check(self.triton_device in ("cpu", "cuda"), PrivateTritonSettings, "triton_device",
               "cpu or cuda")  # fmt: skip


@dataclass(frozen=True, slots=True)
class UpSettings(Settings):
    """``samserve up``'s ports (its services bind loopback unless ``--host`` says otherwise)."""

    title: ClassVar[str] = "local stack"
    embedding_port: int = setting(0, "embedding service gRPC port (0 picks a free one)")
    decoder_port: int = setting(0, "decoder service gRPC port (0 picks a free one)")
    embedding_metrics_port: int = setting(0, "embedding service /metrics port")
    decoder_metrics_port: int = setting(0, "decoder service /metrics port")

    def server(self, name: str, base: ServerSettings) -> ServerSettings:
        """Service ``name``'s (``embedding`` or ``decoder``) settings: ``base`` (host, grace,
        TLS, tokens) with this service's ports."""
        return dataclasses.replace(
            base,
            port=getattr(self, f"{name}_port"),
            metrics_port=getattr(self, f"{name}_metrics_port"),
            flag_prefix=f"{name}-",
        )


@dataclass(frozen=True, slots=True)
class StatusSettings(Settings):
    """``samserve status``: which deployment to report on."""

    title: ClassVar[str] = "kubernetes"
    namespace: str = setting(
        DEFAULT_NAMESPACE, "namespace of the deployment", short="-n", env="SAMSERVE_K8S_NAMESPACE"
    )
    selector: str = setting(
        DEFAULT_SELECTOR,
        "label selector of the deployment's objects",
        short="-l",
        env="SAMSERVE_K8S_SELECTOR",
    )
    output: str = setting(
        "table", "report format", choices=("table", "json"), env=False, short="-o"
    )
    triton_url: str | None = setting(
        None,
        "Triton HTTP URL to ask (e.g. after kubectl port-forward); default: every Triton pod "
        "through the API server's pod proxy",
        flag="--triton-url",
        env="SAMSERVE_K8S_TRITON_URL",
    )
    context: str | None = setting(None, "kubeconfig context", env=False)
    kubeconfig: str | None = setting(None, "kubeconfig file", env=False)


@dataclass(frozen=True, slots=True)
class OnnxExportSettings(Settings):
    """``samserve export-onnx``: where the exported decoder goes, and in which forms."""

    title: ClassVar[str] = "onnx export"
    out: str | None = setting(
        None, "directory to write decoder.onnx and model.json to (required)", metavar="DIR",
        env="SAMSERVE_ONNX_OUT",
    )  # fmt: skip
    quantize: bool = setting(
        False, "also write decoder.quant.onnx (int8) with its IoU against fp32",
        env="SAMSERVE_ONNX_QUANTIZE",
    )  # fmt: skip
    opset: int = setting(17, "ONNX opset version", env="SAMSERVE_ONNX_OPSET")

    def __post_init__(self) -> None:
        _check(bool(self.out), OnnxExportSettings, "out", "required: the output directory")
        _check(self.opset >= 17, OnnxExportSettings, "opset", "must be >= 17")
