"""Test helper: `samserve embedding` / `samserve decoder` replicas as child processes.

Each replica logs to a temporary file; it is ready when it logs its "serving on" line, which
names its gRPC address and metrics URL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

_SERVING = re.compile(r"(embedding|decoder) serving on (\S+), metrics (\S+)")


class Replica:
    """One service process (``kind`` is ``embedding`` or ``decoder``)."""

    def __init__(
        self, kind: str, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.log = tempfile.NamedTemporaryFile(prefix=f"{kind}-", suffix=".log")  # noqa: SIM115
        fixed = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--grace", "1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samserve", kind, *fixed, *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while True:
            match = _SERVING.search(self.text())
            if match:
                self.address, self.metrics_url = match.group(2), match.group(3)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.text()
                self.close()
                raise AssertionError(f"samserve {kind} did not start:\n{text}")
            time.sleep(0.1)

    def text(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def metric(self, name: str) -> float:
        """The sum of every sample called ``name`` (any labels) on this replica's /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            body = r.read().decode()
        total = 0.0
        for line in body.splitlines():
            if line.startswith((name + " ", name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL: no drain, no lease release."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
