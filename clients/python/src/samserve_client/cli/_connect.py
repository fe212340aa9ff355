"""The flags every client command shares: where the services are and how to reach them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class UsageError(Exception):
    """A flag value the command cannot use (reported on one line, exit code 2)."""


def env_option(
    group: Any, flag: str, var: str, env: Mapping[str, str], default: Any = None, **kwargs: Any
) -> argparse.Action:
    """``group.add_argument(flag)`` whose default comes from the environment variable ``var``
    (recorded on the action as ``env_var``, which the configuration reference reads)."""
    value = env.get(var) or default
    action: argparse.Action = group.add_argument(flag, default=value, **kwargs)
    action.env_var = var  # type: ignore[attr-defined]
    return action


def add_cli_args(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, timeout: float
) -> None:
    """Service addresses, model, deadline, TLS files and token file, each with its env twin.

    The TLS and token variables are ``SAMSERVE_CLIENT_*``: a client command run inside a
    server's pod must not pick up the server's own ``SAMSERVE_TLS_*`` files.
    """
    g = parser.add_argument_group("connection")
    env_option(g, "--embedding", "SAMSERVE_EMBEDDING_ADDRESS", env, "127.0.0.1:50051",
               help="embedding service address")  # fmt: skip
    env_option(g, "--decoder", "SAMSERVE_DECODER_ADDRESS", env, "127.0.0.1:50052",
               help="decoder service address")  # fmt: skip
    g.add_argument("--model", default="", help="model variant to ask for (default: server's)")
    g.add_argument("--timeout", type=float, default=timeout, help="deadline per call, seconds")
    for flag, what in (
        ("ca", "CA certificate the servers' certificates chain to; giving it means TLS"),
        ("cert", "client certificate for mutual TLS (with --tls-key)"),
        ("key", "private key of --tls-cert"),
    ):
        env_option(g, f"--tls-{flag}", f"SAMSERVE_CLIENT_TLS_{flag.upper()}", env, type=Path,
                   metavar="PATH", help=what)  # fmt: skip
    env_option(g, "--token-file", "SAMSERVE_CLIENT_TOKEN_FILE", env, type=Path, metavar="PATH",
               help="file holding the bearer token sent on every call")  # fmt: skip


def read_token(path: Path) -> str:
    """The token in ``path``: its only line, surrounding whitespace removed."""
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror or e}") from None
    if not token or any(c.isspace() for c in token):
        raise UsageError(f"--token-file {path}: must hold one token")
    return token


def client_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for SamClient / AsyncSamClient from the parsed flags."""
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        path: Path | None = getattr(ns, flag)
        if path is not None and not path.is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: no such file")
    return {
        "embedding_address": ns.embedding,
        "decoder_address": ns.decoder,
        "tls_ca": ns.tls_ca,
        "tls_cert": ns.tls_cert,
        "tls_key": ns.tls_key,
        "token": None if ns.token_file is None else read_token(ns.token_file),
        "model": ns.model,
        "timeout": ns.timeout,
    }


def open_client(cls: type[T], ns: argparse.Namespace) -> T:
    """A SamClient or AsyncSamClient for the parsed flags.

    Raises:
        UsageError: a setting the client refuses (a token bound for plaintext, a certificate
            without its key, an unreadable file, a negative timeout).
    """
    kwargs = client_kwargs(ns)
    try:
        return cls(**kwargs)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
