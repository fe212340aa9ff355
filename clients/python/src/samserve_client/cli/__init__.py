"""The client commands of ``samserve``, which need no torch (``pip install
"samserve-client[cli]"``): ``segment`` (one prompt query), ``export`` (a folder, SA-1B style)
and ``web`` (an interactive page over both services).

``main`` is the SDK's ``samserve`` console script and ``python -m samserve_client``: it runs a
client command itself and hands any other command to the server's CLI when the ``samserve``
package is installed. The server's CLI adds the same commands with :func:`register` and runs
them with :func:`run`, so ``samserve segment`` behaves the same from either package.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from samserve_client.cli import _connect

#: The commands this package runs; every other one belongs to the server's CLI.
CLIENT_COMMANDS = ("segment", "export", "web")
#: Options of the server's CLI that come before the command and take a value.
_GLOBAL_OPTIONS_WITH_VALUE = frozenset({"--log-level"})


def register(subparsers: Any, env: Mapping[str, str]) -> None:
    """Add ``segment`` and ``export`` to an argparse ``add_subparsers()`` object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
        env: the environment the flags take their defaults from (``SAMSERVE_*``).
    """
    from samserve_client import web
    from samserve_client.cli import export, segment

    seg = subparsers.add_parser("segment", help="one prompt query through the SDK")
    segment.add_cli_args(seg, env)
    seg.set_defaults(client_command=segment.run, client_command_name="segment")
    exp = subparsers.add_parser(
        "export", help="segment everything in a folder of images: one SA-1B-style JSON each"
    )
    export.add_cli_args(exp, env)
    exp.set_defaults(client_command=export.run, client_command_name="export")
    page = subparsers.add_parser("web", help="an interactive page: click on an image, see the mask")
    web.add_cli_args(page, env)
    page.set_defaults(client_command=web.run_web, client_command_name="web")


def run(ns: argparse.Namespace) -> int:
    """Run a client command parsed with :func:`register`'s flags; returns the exit code (2 for
    a flag the command cannot use, reported on one line)."""
    try:
        code: int = ns.client_command(ns)
    except _connect.UsageError as e:
        print(f"samserve {ns.client_command_name}: {e}", file=sys.stderr)
        return 2
    return code


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser of the client commands alone."""
    parser = argparse.ArgumentParser(
        prog="samserve", description="samserve's client commands (the server's need samserve)."
    )
    parser.add_argument("--log-level", default=env.get("SAMSERVE_LOG_LEVEL", "WARNING"))
    register(parser.add_subparsers(dest="command", required=True), env)
    return parser


def _command(args: Sequence[str]) -> str | None:
    """The command word of a ``samserve`` command line (the first non-option argument)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else None
        if not arg.startswith("-"):
            return arg
        i += 2 if arg in _GLOBAL_OPTIONS_WITH_VALUE else 1
    return None


def _server_cli_available() -> bool:
    try:
        return importlib.util.find_spec("samserve.cli") is not None
    except ImportError:  # no samserve package at all
        return False


def main(argv: Sequence[str] | None = None) -> None:
    """The ``samserve`` command: client commands here, the others in the server's CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = _command(args)
    if command not in CLIENT_COMMANDS:
        if _server_cli_available():
            # The server package is optional: looked up at run time, never a dependency.
            importlib.import_module("samserve.cli").main(args)
            return
        if command is not None:
            print(
                f"samserve: {command!r} needs the server package (pip install samserve); "
                f"samserve-client has only {', '.join(CLIENT_COMMANDS)}",
                file=sys.stderr,
            )
            sys.exit(2)
    env = dict(os.environ)
    parser = build_parser(env)
    ns = parser.parse_args(args)
    level = ns.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"--log-level {ns.log_level!r} is not a logging level")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(run(ns))
