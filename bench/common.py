"""Shared helpers for the benchmarks: start `samserve up`, percentiles, table printing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# The benchmarks run as scripts (`python bench/x.py`); tools.shapes lives at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile_ms(samples: Sequence[float], q: float) -> float:
    """The q-th percentile of ``samples`` (seconds), in milliseconds."""
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


@contextmanager
def samserve_up(*args: str, wrap: Sequence[str] = ()) -> Iterator[dict[str, object]]:
    """Run `samserve up ARGS` in a child process; yield its ready line (plus its ``pid``); stop
    it cleanly. ``wrap`` is a command prefix (e.g. one that joins a cgroup, then execs)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "samserve", "up", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(30)
                log.seek(0)
                raise RuntimeError("samserve up failed:\n" + log.read().decode())
            yield {**json.loads(line), "pid": proc.pid}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def print_table(title: str, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Print rows of (what, reference, samserve, ratio) as an aligned table."""
    from samserve.cli.table import table_lines

    header = ("measure", "reference", "samserve", "ratio (samserve/ref)")
    print(f"\n{title}", *table_lines(rows, header), sep="\n")
