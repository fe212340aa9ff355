"""``samserve web``: a page where a person opens an image, clicks, and sees the mask.

The page (static/index.html, app.js) embeds the image once through ``POST /api/embed``, then
decodes each click either in the browser, with onnxruntime-web running the decoder that
``samserve export-onnx`` wrote over the tensor ``GetEmbedding`` returns (the paper's design), or
on the decoder service through ``POST /api/segment``. ``?decode=browser`` or ``?decode=server``
forces a mode; without it the page decodes in the browser when onnxruntime-web and an exported
decoder are both there. The server is a client program: the SDK and the standard library only.

    samserve web --embedding ADDR --decoder ADDR [--onnx-dir DIR] [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import inspect
import json
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from samserve_client._client import SamClient
    from samserve_client.web.server import WebServer

DEFAULT_PORT = 8080
#: The embedding service's default --max-image-bytes: the page accepts what the service does.
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024


class UsageError(Exception):
    """A flag value the command cannot use (one line, exit code 2)."""


def _flag(
    group: argparse._ArgumentGroup,
    flag: str,
    var: str | None,
    env: Mapping[str, str],
    default: Any,
    help: str,
    **kwargs: Any,
) -> None:
    # A variable's text becomes the default as it is: argparse converts a string default with
    # the flag's type, so a bad value is reported like a bad flag, and only by this command.
    value = env[var] if var is not None and var in env else default
    action = group.add_argument(flag, default=value, help=help, **kwargs)
    action.env_var = var  # type: ignore[attr-defined]  # docs/configuration.md's env column


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The ``web`` command's flags, each (but ``--model``) with its ``SAMSERVE_*`` twin.

    The connection flags are the other client commands' (addresses, TLS files, token file).
    """
    c = parser.add_argument_group("connection")
    _flag(
        c,
        "--embedding",
        "SAMSERVE_EMBEDDING_ADDRESS",
        env,
        "127.0.0.1:50051",
        "embedding service address",
    )
    _flag(
        c,
        "--decoder",
        "SAMSERVE_DECODER_ADDRESS",
        env,
        "127.0.0.1:50052",
        "decoder service address",
    )
    _flag(c, "--model", None, env, None, "model variant to ask for (default: the server's)")
    _flag(c, "--timeout", None, env, 60.0, "deadline per call, seconds", type=float)
    for name, what in (
        ("ca", "CA certificate the servers' certificates chain to; giving it means TLS"),
        ("cert", "client certificate for mutual TLS (with --tls-key)"),
        ("key", "private key of --tls-cert"),
    ):
        _flag(
            c,
            f"--tls-{name}",
            f"SAMSERVE_TLS_{name.upper()}",
            env,
            None,
            what,
            type=Path,
            metavar="PATH",
        )
    _flag(
        c,
        "--token-file",
        "SAMSERVE_TOKEN_FILE",
        env,
        None,
        "file holding the bearer token sent on every call",
        type=Path,
        metavar="PATH",
    )
    w = parser.add_argument_group("page")
    _flag(w, "--host", "SAMSERVE_WEB_HOST", env, "127.0.0.1", "address the page listens on")
    _flag(
        w,
        "--port",
        "SAMSERVE_WEB_PORT",
        env,
        DEFAULT_PORT,
        "page port (0 picks a free one)",
        type=int,
    )
    _flag(
        w,
        "--onnx-dir",
        "SAMSERVE_WEB_ONNX_DIR",
        env,
        None,
        "what samserve export-onnx wrote, for decoding in the browser",
        type=Path,
        metavar="DIR",
    )
    _flag(
        w,
        "--max-image-bytes",
        "SAMSERVE_MAX_IMAGE_BYTES",
        env,
        DEFAULT_MAX_IMAGE_BYTES,
        "largest image the page uploads, bytes (the embedding service's limit)",
        type=int,
    )


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror or e}") from None
    if not token or any(ch.isspace() for ch in token):
        raise UsageError(f"--token-file {path}: must hold one token")
    return token


def open_client(ns: argparse.Namespace) -> SamClient:
    """A SamClient for the parsed flags.

    Raises:
        UsageError: a missing TLS file, or TLS flags with an SDK that has no TLS.
    """
    from samserve_client import SamClient

    security = {
        "tls_ca": ns.tls_ca,
        "tls_cert": ns.tls_cert,
        "tls_key": ns.tls_key,
        "token": _token(ns.token_file),
    }
    security = {k: v for k, v in security.items() if v is not None}
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        if flag in security and not Path(security[flag]).is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {security[flag]}: no such file")
    if security and "tls_ca" not in inspect.signature(SamClient).parameters:
        raise UsageError("this samserve-client has no TLS or token support")
    try:
        return SamClient(
            ns.embedding, ns.decoder, model=ns.model or "", timeout=ns.timeout, **security
        )
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def build_server(ns: argparse.Namespace, client: SamClient) -> WebServer:
    """The page's server over ``client`` for the parsed flags (not started)."""
    import functools

    from samserve_client._embedding import get_embedding
    from samserve_client.pb import embedding_pb2_grpc
    from samserve_client.web.api import WebApi
    from samserve_client.web.server import STATIC_DIR, WebServer

    # The client's own channel carries its credentials; SamClient.get_embedding replaces this
    # stub once the client classes have it.
    stub = embedding_pb2_grpc.EmbeddingServiceStub(client._embedding_channel)
    api = WebApi(
        client,
        functools.partial(get_embedding, stub, model=ns.model or "", timeout=ns.timeout),
        max_image_bytes=ns.max_image_bytes,
        onnx_dir=ns.onnx_dir,
        vendor_dir=STATIC_DIR / "vendor",
    )
    return WebServer(api, ns.host, ns.port)


def run_web(ns: argparse.Namespace) -> int:
    """Serve the page until SIGINT or SIGTERM. Prints one JSON line, ``{"web": URL}``, when
    it listens. Returns the exit code (2 for a flag it cannot use, 1 for a port in use)."""
    try:
        client = open_client(ns)
    except UsageError as e:
        print(f"samserve web: {e}", file=sys.stderr)
        return 2
    try:
        try:
            server = build_server(ns, client).start()
        except OSError as e:
            print(f"samserve web: --port {ns.port}: {e.strerror or e}", file=sys.stderr)
            return 1
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(json.dumps({"web": server.url}), flush=True)
        stop.wait()
        server.close()
    finally:
        client.close()
    return 0
