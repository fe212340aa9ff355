"""Generate docs/configuration.md from the parser: ``python -m samserve.cli.docs > FILE``.

The reference of every command's flags, environment variables and defaults is therefore the
parser itself; tests/contract/test_docs.py fails when the committed file is out of date.
"""

from __future__ import annotations

import argparse
import sys

from samserve.cli import build_parser

HEADER = """# Configuration reference

Generated from the command-line parser by `python -m samserve.cli.docs > docs/configuration.md`
(a test fails when this file is out of date): every flag of every `samserve` command, the
`SAMSERVE_*` environment variable that sets it when the flag is absent, and its default.
A flag wins over its variable; the variable wins over the default.
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _default(action: argparse.Action) -> str:
    if action.default is None or action.default == argparse.SUPPRESS:
        return ""
    if isinstance(action.default, list) and not action.default:
        return ""
    return f"`{action.default}`"


def _rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(f"`{f}`" for f in action.option_strings)
        var = getattr(action, "env_var", None)
        env = f"`{var}`" if var else ""
        meaning = (action.help or "").replace("|", "\\|")
        if action.choices:
            meaning += f" ({', '.join(str(c) for c in action.choices)})"
        rows.append(f"| {flags} | {env} | {_default(action)} | {meaning} |")
    return rows


def render() -> str:
    """The whole reference, for an empty environment (the defaults a new user gets)."""
    parser = build_parser({})
    lines = [HEADER, "## Every command", "", *_rows(parser), ""]
    for name, sub in _subparsers(parser).items():
        lines += [f"## `samserve {name}`", "", *_rows(sub), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
