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
import json
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from samserve_client.cli import _connect

if TYPE_CHECKING:
    from samserve_client._client import SamClient
    from samserve_client._embedding import EmbeddingTensors
    from samserve_client.web.server import WebServer

DEFAULT_PORT = 8080
#: The embedding service's default --max-image-bytes: the page accepts what the service does.
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The ``web`` command's flags: the client commands' connection flags, and the page's own."""
    _connect.add_cli_args(parser, env, timeout=60.0)
    w = parser.add_argument_group("page")
    option = _connect.env_option
    option(w, "--host", "SAMSERVE_WEB_HOST", env, "127.0.0.1", help="address the page uses")
    option(w, "--port", "SAMSERVE_WEB_PORT", env, DEFAULT_PORT, type=int,
           help="page port (0 picks a free one)")  # fmt: skip
    option(w, "--onnx-dir", "SAMSERVE_WEB_ONNX_DIR", env, type=Path, metavar="DIR",
           help="what samserve export-onnx wrote, for decoding in the browser")  # fmt: skip
    option(w, "--max-image-bytes", "SAMSERVE_MAX_IMAGE_BYTES", env, DEFAULT_MAX_IMAGE_BYTES,
           type=int, help="largest image the page uploads (the service's limit)")  # fmt: skip


UsageError = _connect.UsageError


def open_client(ns: argparse.Namespace) -> SamClient:
    """The page's SamClient for the parsed connection flags (see ``cli._connect``).

    Raises:
        UsageError: a TLS file that is missing, a token file without one token, or a setting
            the client refuses.
    """
    from samserve_client import SamClient

    return _connect.open_client(SamClient, ns)


def build_server(ns: argparse.Namespace, client: SamClient) -> WebServer:
    """The page's server over ``client`` for the parsed flags (not started)."""
    from samserve_client.types import EmbeddingRef
    from samserve_client.web.api import WebApi
    from samserve_client.web.server import STATIC_DIR, WebServer

    def fetch(image_id: str) -> EmbeddingTensors:
        return client.get_embedding(EmbeddingRef(image_id, True, "", 0, 0))

    api = WebApi(
        client,
        fetch,
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
