"""The import rules of docs/architecture.md, checked on the source (function-level imports too).

Each folder of the server package may import only what its layer allows, so the domain stays
free of transport and the transport free of models and storage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "services" / "samserve"
SDK = ROOT / "clients" / "python" / "src" / "samserve_client"

#: (files, forbidden import prefixes, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "core/**/*.py",
        ("grpc", "grpc_health", "grpc_reflection", "samserve_client", "samserve.rpc",
         "samserve.cli", "samserve.procs", "samserve.compose", "samserve.config",
         "samserve.triton_model"),
        "the domain knows no transport, no CLI and no settings parsing",
    ),
    (
        "rpc/**/*.py",
        ("torch", "redis", "segment_anything", "sam2", "tritonclient", "samserve.core.store",
         "samserve.cli", "samserve.procs", "samserve.compose", "samserve.config"),
        "servicers parse, call the core and build responses; models and storage stay in core",
    ),
    (
        "procs/**/*.py",
        ("grpc", "samserve.rpc", "samserve.cli", "samserve.compose", "torch"),
        "child processes are plain subprocess management",
    ),
    (
        "config.py",
        ("torch", "grpc", "redis", "samserve.core.models", "samserve.rpc", "samserve.compose",
         "samserve.cli", "samserve.procs"),
        "settings parse flags without loading models or frameworks",
    ),
    (
        "cli/**/*.py",
        ("grpc", "samserve.rpc.embedding", "samserve.rpc.decoder", "samserve.rpc.interceptors"),
        "commands compose through samserve.compose, never wire servicers themselves",
    ),
    (
        "triton_model.py",
        ("grpc", "samserve.rpc", "samserve.cli", "samserve.compose", "samserve.procs",
         "samserve.core.store"),
        "the Triton model runs only the encoder",
    ),
]  # fmt: skip


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in files:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                out.append(f"{where} imports {name}")
    return out


@pytest.mark.parametrize(("pattern", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_layer_imports(pattern: str, forbidden: tuple[str, ...], why: str) -> None:
    files = sorted(SERVER.glob(pattern))
    assert files, pattern
    assert _violations(files, forbidden) == [], why


def test_the_sdk_never_imports_the_server() -> None:
    """samserve-client installs alone: no server, no torch, no Redis (the server is looked up
    at run time by the CLI, never imported by a statement)."""
    files = [f for f in sorted(SDK.rglob("*.py")) if "_proto" not in f.parts]
    assert _violations(files, ("samserve", "torch", "segment_anything", "redis")) == []


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    import grpc.aio\n")
    assert _violations([bad], ("grpc",)) == [f"{bad} imports grpc.aio"]
