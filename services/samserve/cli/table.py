"""Plain aligned text tables, for command output and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table_lines(rows: Iterable[Sequence[object]], header: Sequence[str]) -> list[str]:
    """``header`` and ``rows`` as left-aligned columns two spaces apart."""
    cells = [list(map(str, header)), *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
