"""A bad setting stops a command at start with one line naming the flag, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _samserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "samserve", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("samserve:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    _one_line(_samserve("decoder", "--checkpoint", str(missing)), "--checkpoint", "no such file")


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    _one_line(_samserve("decoder", "--port", "0", "--checkpoint", str(bad)), "--checkpoint")


def test_bad_environment_value() -> None:
    result = _samserve("decoder", env={"SAMSERVE_PORT": "fifty"})
    _one_line(result, "SAMSERVE_PORT", "--port")


def test_port_in_use(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _samserve(
            "decoder", "--checkpoint", "random", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", "0", "--redis-url", redis_url,
        )  # fmt: skip
    _one_line(result, "--port", str(port))


def test_up_names_its_own_port_flag(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _samserve(
            "up", "--checkpoint", "random", "--redis-url", redis_url,
            "--decoder-metrics-port", str(port),
        )  # fmt: skip
    _one_line(result, "--decoder-metrics-port", str(port))


def test_expect_model_id_refuses_other_weights() -> None:
    _one_line(
        _samserve("decoder", "--checkpoint", "random", "--expect-model-id", "tiny-0000"),
        "--expect-model-id",
        "not tiny-0000",
    )
