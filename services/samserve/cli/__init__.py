"""The ``samserve`` command: parses flags into settings and hands them to one command module.

    samserve up                 a complete local stack (cli/up.py)
    samserve embedding|decoder  one service, as a container runs it (cli/serve.py)
    samserve segment|export     client commands (samserve_client.cli, no torch)
    samserve export-onnx        the official ONNX decoder of a model (cli/export_onnx.py)
    samserve web                an interactive page over both services (samserve_client.web)
    samserve status             a deployment's health on Kubernetes (cli/status.py)
    samserve checkpoint         fetch, verify or identify a checkpoint (cli/checkpoint.py)

Every flag, its ``SAMSERVE_*`` twin and its default come from the settings classes in
``samserve.config``; docs/configuration.md is generated from this parser (cli/docs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence

from samserve.config import (
    SERVICE_PORTS,
    DecoderSettings,
    EmbedderSettings,
    EncoderSettings,
    Limits,
    LogSettings,
    ModelSettings,
    PrivateTritonSettings,
    ServerSettings,
    StatusSettings,
    StoreSettings,
    UpSettings,
    environ,
)
from samserve.core.errors import ConfigError
from samserve_client import cli as client_cli


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The whole command line (flags take their defaults from ``env``).

    Raises:
        ConfigError: a ``SAMSERVE_*`` variable holds a value of the wrong type.
    """
    parser = argparse.ArgumentParser(
        prog="samserve", description="Serve Segment Anything: embed once, prompt many."
    )
    LogSettings.add_cli_args(parser, env)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a complete local stack (Redis + both services)")
    ModelSettings.add_cli_args(up, env)
    StoreSettings.add_cli_args(up, env, defaults={"redis_url": None})
    Limits.add_cli_args(up, env)
    DecoderSettings.add_cli_args(up, env)
    EmbedderSettings.add_cli_args(up, env)
    EncoderSettings.add_cli_args(up, env)
    PrivateTritonSettings.add_cli_args(up, env)
    ServerSettings.add_cli_args(
        up, env, defaults={"host": "127.0.0.1"}, skip=("port", "metrics_port", "health_port")
    )
    UpSettings.add_cli_args(up, env)

    for name, ports in SERVICE_PORTS.items():
        p = sub.add_parser(name, help=f"run the {name} service alone")
        ModelSettings.add_cli_args(p, env)
        StoreSettings.add_cli_args(p, env)
        Limits.add_cli_args(p, env)
        ServerSettings.add_cli_args(p, env, defaults=ports)
        if name == "embedding":
            EmbedderSettings.add_cli_args(p, env)
            EncoderSettings.add_cli_args(p, env)
        else:
            DecoderSettings.add_cli_args(p, env)

    client_cli.register(sub, env)

    from samserve.cli import checkpoint, export_onnx

    checkpoint.add_cli_args(
        sub.add_parser("checkpoint", help="fetch, verify or identify a SAM checkpoint"), env
    )
    export_onnx.add_cli_args(
        sub.add_parser("export-onnx", help="write the official ONNX decoder of a model"), env
    )

    status = sub.add_parser("status", help="health of a samserve deployment on Kubernetes")
    StatusSettings.add_cli_args(status, env)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; a bad setting ends the process with one line naming the flag."""
    try:
        sys.exit(_run(argv))
    except ConfigError as e:
        sys.exit(f"samserve: {e}")
    except KeyboardInterrupt:  # Ctrl-C is how a local stack is stopped: a clean exit
        sys.exit(0)


def _run(argv: Sequence[str] | None) -> int:
    ns = build_parser(environ()).parse_args(argv)
    logging.basicConfig(
        level=LogSettings.from_args(ns).log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if ns.command == "status":
        from samserve.cli.status import run_status

        return run_status(ns)
    if ns.command in client_cli.CLIENT_COMMANDS:
        return client_cli.run(ns)
    if ns.command == "checkpoint":
        from samserve.cli import checkpoint

        return checkpoint.run(ns)
    if ns.command == "export-onnx":
        from samserve.cli import export_onnx

        return export_onnx.run(ns)
    if ns.command == "up":
        from samserve.cli.up import up

        asyncio.run(up(ns))
    else:
        from samserve.cli.serve import serve

        asyncio.run(serve(ns))
    return 0
