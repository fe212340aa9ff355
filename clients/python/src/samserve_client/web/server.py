"""The page's HTTP server: static files, the exported decoder, and the JSON API (stdlib only).

A ``ThreadingHTTPServer``: each request on its own thread, all sharing one SamClient (gRPC sync
channels are thread-safe). Every answer is same-origin and sent with the two cross-origin
isolation headers, which let onnxruntime-web run its threaded WebAssembly build.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from samserve_client.web.api import ApiError, WebApi

log = logging.getLogger(__name__)

#: The page, its script and style; ``vendor/`` holds onnxruntime-web's files when installed.
STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}
_DECODER_FILES = frozenset({"decoder.onnx", "decoder.quant.onnx", "model.json"})
_ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}


class _Handler(BaseHTTPRequestHandler):
    server: WebServer._Http
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        api = self.server.api
        try:
            if path in ("/", "/index.html"):
                self._file(STATIC_DIR / "index.html", STATIC_DIR)
            elif path.startswith("/static/"):
                self._file(STATIC_DIR / path[len("/static/") :], STATIC_DIR)
            elif path.startswith("/decoder/") and api.onnx_dir is not None:
                name = path[len("/decoder/") :]
                if name not in _DECODER_FILES:
                    raise ApiError(404, f"{path}: not found")
                self._file(api.onnx_dir / name, api.onnx_dir)
            elif path == "/api/config":
                self._json(200, api.config())
            elif path.startswith("/api/embedding/"):
                body, headers = api.embedding(path[len("/api/embedding/") :])
                self._send(200, body, "application/octet-stream", headers)
            else:
                raise ApiError(404, f"{path}: not found")
        except ApiError as e:
            self._json(e.status, {"error": e.message})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        api = self.server.api
        try:
            limit = api.max_image_bytes if path == "/api/embed" else None
            body = self._body(limit)
            if path == "/api/embed":
                self._json(200, api.embed(body))
            elif path == "/api/segment":
                self._json(200, api.segment(body))
            else:
                raise ApiError(404, f"{path}: not found")
        except ApiError as e:
            self._json(e.status, {"error": e.message})

    def _body(self, limit: int | None) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Content-Length: required") from None
        cap = limit if limit is not None else 1024 * 1024
        if length < 0 or length > cap:
            # Not read: the connection closes after this answer instead.
            self.close_connection = True
            raise ApiError(413, f"body: {length} bytes is over the limit of {cap}")
        return self.rfile.read(length)

    def _file(self, path: Path, root: Path) -> None:
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
            raise ApiError(404, f"{self.path}: not found")
        kind = _TYPES.get(resolved.suffix) or mimetypes.guess_type(resolved.name)[0]
        self._send(200, resolved.read_bytes(), kind or "application/octet-stream", {})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json", {"Cache-Control": "no-store"})

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_ISOLATION, **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class WebServer:
    """The page and its API on ``host:port`` (0 picks a free port), served from a thread.

    Args:
        api: what the API does.
        host: address to listen on.
        port: TCP port; 0 picks a free one (read :attr:`url` after :meth:`start`).
    """

    class _Http(ThreadingHTTPServer):
        daemon_threads = True
        api: WebApi

    def __init__(self, api: WebApi, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api = api
        self._http = WebServer._Http((host, port), _Handler)
        self._http.api = api
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port/`` of the page."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> WebServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(10)
