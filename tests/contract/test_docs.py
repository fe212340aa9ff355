"""The docs that describe the code are checked against it: flags, variables, module maps."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from samserve.cli import build_parser
from samserve.cli.docs import _subparsers, render

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "services" / "samserve"
_VAR = re.compile(r"\bSAMSERVE_[A-Z0-9_]+\b")


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "run: python -m samserve.cli.docs > docs/configuration.md"


def _known_variables() -> set[str]:
    """Variables some code reads: the parser's twins, and names the sources look up."""
    parser = build_parser({})
    known = set()
    for p in [parser, *_subparsers(parser).values()]:
        known |= {a.env_var for a in p._actions if getattr(a, "env_var", None)}  # type: ignore[attr-defined]
    sources = [*SERVER.rglob("*.py"), *(ROOT / "clients" / "python" / "src").rglob("*.py")]
    for path in sources:
        known |= set(_VAR.findall(path.read_text()))
    return known


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [ROOT / line for line in out.stdout.splitlines()]


def test_every_documented_or_deployed_variable_is_read_by_the_code() -> None:
    known = _known_variables()
    unknown = {}
    for path in _tracked("deploy", "docker", "docs", "README.md", "triton_models"):
        if path.suffix in (".png", ".pth") or not path.is_file():
            continue
        names = set(_VAR.findall(path.read_text(errors="replace"))) - known
        if names:
            unknown[str(path.relative_to(ROOT))] = sorted(names)
    assert unknown == {}


def _backticked_paths(text: str) -> set[str]:
    return {m for m in re.findall(r"`([\w./-]+\.py|[\w./-]+/)`", text)}


def _has_code(path: Path) -> bool:
    return path.name != "__init__.py" or any(
        line.startswith(("def ", "class ", "async def ")) for line in path.read_text().splitlines()
    )


def test_architecture_module_map_matches_the_tree() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    mapped = {p for p in _backticked_paths(table) if p.endswith(".py")}
    modules = {
        str(p.relative_to(SERVER))
        for p in SERVER.rglob("*.py")
        if "__pycache__" not in p.parts and _has_code(p)
    }
    assert mapped == modules, "docs/architecture.md's module map differs from services/samserve"


def test_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    first_column = "\n".join(
        line.split("|")[1] for line in table.splitlines() if line.startswith("| `")
    )
    named = {p.rstrip("/") for p in _backticked_paths(first_column) if p.endswith("/")}
    for path in named:
        assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"
    top = {p.relative_to(ROOT).parts[0] for p in _tracked() if len(p.relative_to(ROOT).parts) > 1}
    top -= {".ci"}
    assert {t for t in top if not any(n == t or n.startswith(t + "/") for n in named)} == set()
