"""The `samserve` command as a user runs it: up (the server's), segment (the SDK's, which needs
no torch), and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.shapes import write_sample_png

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMSERVE = [sys.executable, "-m", "samserve"]
#: The SDK's entry point: client commands itself, any other one through the server's CLI.
CLIENT = [sys.executable, "-m", "samserve_client"]


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which importing torch fails."""
    blocker = tmp_path_factory.mktemp("no-torch")
    (blocker / "torch").mkdir()
    (blocker / "torch" / "__init__.py").write_text(
        'raise ImportError("the client commands must not need torch")\n'
    )
    path = [str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _children(pid: int) -> list[int]:
    """Child pids of every thread of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


class Up:
    """`samserve up` in a child process; its log goes to a temporary file."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [*SAMSERVE, "up", "--checkpoint", "random", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            self.log.seek(0)
            raise AssertionError(f"samserve up failed:\n{self.log.read().decode()}")
        self.ready = json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def up() -> Iterator[Up]:
    stack = Up()
    yield stack
    stack.close()


def test_up_prints_one_ready_line(up: Up) -> None:
    r = up.ready
    assert set(r) >= {"embedding", "decoder", "redis", "metrics"}
    assert r["redis"].startswith("redis://127.0.0.1:")
    assert r["metrics"]["embedding"].startswith("http://")
    assert r["metrics"]["decoder"].endswith("/metrics")


def test_segment_command_and_clean_stop(
    up: Up, tmp_path: Path, without_torch: dict[str, str]
) -> None:
    image = tmp_path / "sample.png"
    write_sample_png(image, seed=3, height=240, width=320)
    out = tmp_path / "mask.png"
    cmd = [*CLIENT, "segment", str(image), "--point", "120,100", "--point", "5,5,0",
           "--embedding", up.ready["embedding"], "--decoder", up.ready["decoder"],
           "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=without_torch)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["scores"]) == 3
    mask = np.asarray(Image.open(out))
    assert mask.shape == (240, 320)

    redis_children = _children(up.proc.pid)
    assert redis_children, "samserve up should run a private redis-server"
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(30) == 0
    assert not any(_alive(pid) for pid in redis_children)


def test_segment_command_reports_errors(
    up: Up, tmp_path: Path, without_torch: dict[str, str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    cmd = [*CLIENT, "segment", str(bad), "--point", "1,1",
           "--embedding", up.ready["embedding"], "--decoder", up.ready["decoder"]]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=without_torch)
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr


def test_up_with_external_redis_and_sigint(redis_url: str) -> None:
    stack = Up("--redis-url", redis_url)
    try:
        assert stack.ready["redis"] == redis_url
        assert _children(stack.proc.pid) == []
        stack.proc.send_signal(signal.SIGINT)
        assert stack.proc.wait(30) == 0
    finally:
        stack.close()


def test_sdk_entry_point_hands_server_commands_over() -> None:
    done = subprocess.run([*CLIENT, "up", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--redis-url" in done.stdout
