"""The ``samserve`` command: up | embedding | decoder | segment | export. Parses flags only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence

from samserve import k8s
from samserve.config import (
    ConfigError,
    EncoderSettings,
    Limits,
    ModelSettings,
    StoreSettings,
    environ,
)

log = logging.getLogger("samserve")


def _server_args(
    parser: argparse.ArgumentParser, env: Mapping[str, str], port: int, metrics_port: int
) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=env.get("SAMSERVE_HOST", "0.0.0.0"))
    g.add_argument("--port", type=int, default=int(env.get("SAMSERVE_PORT", port)))
    g.add_argument(
        "--metrics-port", type=int, default=int(env.get("SAMSERVE_METRICS_PORT", metrics_port))
    )
    g.add_argument("--grace", type=float, default=float(env.get("SAMSERVE_GRACE", "10")))


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samserve", description="Serve Segment Anything: embed once, prompt many."
    )
    parser.add_argument("--log-level", default=env.get("SAMSERVE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a complete local stack (Redis + both services)")
    ModelSettings.add_cli_args(up, env)
    StoreSettings.add_cli_args(up, env, url_default=False)
    Limits.add_cli_args(up, env)
    EncoderSettings.add_cli_args(up, env, private=True)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--embedding-port", type=int, default=0)
    up.add_argument("--decoder-port", type=int, default=0)
    up.add_argument("--embedding-metrics-port", type=int, default=0)
    up.add_argument("--decoder-metrics-port", type=int, default=0)
    up.add_argument("--grace", type=float, default=5.0)

    for name, port, metrics_port in (("embedding", 50051, 9101), ("decoder", 50052, 9102)):
        p = sub.add_parser(name, help=f"run the {name} service alone")
        ModelSettings.add_cli_args(p, env)
        StoreSettings.add_cli_args(p, env)
        Limits.add_cli_args(p, env)
        _server_args(p, env, port, metrics_port)
        if name == "embedding":
            EncoderSettings.add_cli_args(p, env, private=False)

    seg = sub.add_parser("segment", help="one prompt query through the SDK")
    seg.add_argument("image", help="image file")
    seg.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]",
        help="point prompt in pixels; LABEL 1 = foreground (default), 0 = background",
    )  # fmt: skip
    seg.add_argument("--box", metavar="X0,Y0,X1,Y1")
    seg.add_argument("--single-mask", action="store_true", help="one mask instead of three")
    seg.add_argument("--out", help="write masks: .npz (all masks + scores) or .png (best mask)")
    seg.add_argument(
        "--embedding", default=env.get("SAMSERVE_EMBEDDING_ADDRESS", "127.0.0.1:50051")
    )
    seg.add_argument("--decoder", default=env.get("SAMSERVE_DECODER_ADDRESS", "127.0.0.1:50052"))
    seg.add_argument("--model", default="", help="model variant to ask for (default: server's)")
    seg.add_argument("--timeout", type=float, default=60.0)

    export = sub.add_parser(
        "export", help="segment everything in a folder of images: one SA-1B-style JSON each"
    )
    from samserve.export import add_cli_args as add_export_args

    add_export_args(export, env)

    status = sub.add_parser("status", help="health of a samserve deployment on Kubernetes")
    k8s.add_cli_args(status, env)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    env = environ()
    ns = build_parser(env).parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if ns.command == "status":
            from samserve.k8s import run_status

            sys.exit(run_status(ns))
        if ns.command == "export":
            from samserve.export import run_export

            sys.exit(run_export(ns))
        if ns.command == "segment":
            from samserve.segment_cmd import run_segment

            sys.exit(run_segment(ns))
        from samserve import run

        if ns.command == "up":
            asyncio.run(run.up(ns))
        else:
            asyncio.run(run.single(ns))
    except ConfigError as e:
        sys.exit(f"samserve: {e}")
    except KeyboardInterrupt:
        pass
