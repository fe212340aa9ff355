"""The page's server over a StackThread, in this process (what ``samserve web`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from samserve_client import web
from samserve_client.web.api import WebApi
from samserve_client.web.server import WebServer
from tests.stack import StackThread


class PageServer:
    """``samserve web`` for ``stack`` on a free loopback port."""

    def __init__(self, stack: StackThread, onnx_dir: Path | None = None) -> None:
        parser = argparse.ArgumentParser()
        web.add_cli_args(parser, {})
        ns = parser.parse_args(
            ["--embedding", stack.embedding_address, "--decoder", stack.decoder_address]
        )
        ns.port = 0
        ns.onnx_dir = onnx_dir
        self.client = web.open_client(ns)
        self.server: WebServer = web.build_server(ns, self.client)
        self.api: WebApi = self.server.api

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> PageServer:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()
        self.client.close()
