"""Every PromQL expression of the autoscalers, the dashboard and the alerts returns data
from a real Prometheus scraping a real samserve stack.

- ``python -m samserve up --checkpoint random`` starts Redis and both services (and Triton
  with ``--encoder triton`` when the CLI offers it and a tritonserver is installed).
- Debian's ``prometheus`` scrapes them every second with ``deploy/monitoring/prometheus-local.yml``
  (the PodMonitors' scrape, same target labels) and evaluates the PrometheusRule's rules.
- Traffic goes through ``SamClient`` (embed and segment, cache hits and misses, NOT_FOUND).
- Each expression is evaluated through ``/api/v1/query`` with Grafana's variables filled in
  and every range window set to 20 s (``manifests.concrete``): an expression must return at
  least one series. An alert's condition returns nothing while it does not fire, so its
  operands (``A`` in ``A > 0.05``) must return data, and the condition itself must evaluate.

Expressions on Triton's metrics are skipped (and listed) when the stack runs the local
encoder; GPU expressions when Triton runs without a GPU; Redis's own metrics when Debian's
``prometheus-redis-exporter`` (the sidecar's program) is not installed.

The autoscaler's busy-GPU arithmetic is checked on Triton's real counters under a load that
forms batches: Triton adds a batch's compute time to each of its requests, so the raw rate
exceeds one busy instance, and the trigger's correction brings it back to at most 1.
"""

from __future__ import annotations

import json
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.deploy.manifests import (
    DEPLOY,
    by_kind,
    concrete,
    condition_operands,
    expressions,
    find,
    render,
)

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

#: Every range window becomes this (1 s scrapes: ~20 samples per series).
WINDOW = "20s"


def _encoder() -> tuple[str, str]:
    """``triton`` when ``samserve up`` offers it and a tritonserver is installed, else local."""
    proc = subprocess.run(
        [sys.executable, "-m", "samserve", "up", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    m = re.search(r"--encoder \{([^}]*)\}", proc.stdout)
    if m is None or "triton" not in m.group(1).split(","):
        return "local", "`samserve up --help` offers no --encoder triton"
    try:
        from samserve.procs.triton import find_tritonserver
    except ImportError as e:
        return "local", f"samserve.procs.triton unavailable ({e})"
    if find_tritonserver() is None:
        return "local", "no tritonserver installed (pip install 'samserve[triton]')"
    return "triton", ""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            break
    raise AssertionError(f"samserve up printed no ready line (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict[str, Any]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    mode, why = _encoder()
    log = tmp_path_factory.mktemp("stack") / "samserve-up.log"
    args = [sys.executable, "-m", "samserve", "--log-level", "WARNING", "up",
            "--checkpoint", "random", "--encoder", mode]  # fmt: skip
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        try:
            ready = json.loads(_read_line(proc, timeout=240))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None
        ready["encoder"] = mode
        ready["encoder_note"] = why
        yield ready
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _hostport(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def redis_exporter(stack) -> Iterator[str | None]:
    """The Redis pod's exporter sidecar, as dev renders its arguments, on the stack's Redis;
    its address, or None when the program is not installed."""
    binary = shutil.which("prometheus-redis-exporter")
    if binary is None:
        yield None
        return
    from samserve.procs.common import free_port

    # dev's arguments: the local stack's Redis is plaintext, like dev's (prod's adds TLS and
    # an ACL user, which tests/deploy/test_commands.py runs).
    pod = find(render("dev"), "StatefulSet", "samserve-redis")["spec"]["template"]["spec"]
    side = next(c for c in pod["containers"] if c["name"] == "redis-exporter")
    address = f"127.0.0.1:{free_port()}"
    redis_hostport = _hostport(stack["redis"])
    args = [
        f"-web.listen-address={address}"
        if a.startswith("-web.listen-address=")
        else a.replace("127.0.0.1:6379", redis_hostport)
        for a in side["args"]
    ]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield address
    finally:
        _stop(proc, timeout=10)


def _scrape_config(stack: dict[str, Any], rules_file: Path, exporter: str | None) -> dict[str, Any]:
    """prometheus-local.yml with the stack's addresses, 1 s intervals and the alert rules."""
    config = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-local.yml").read_text())
    targets = {
        "embedding": _hostport(stack["metrics"]["embedding"]),
        "decoder": _hostport(stack["metrics"]["decoder"]),
    }
    if "triton" in stack:
        targets["triton"] = _hostport(stack["triton"]["metrics"])
    if exporter is not None:
        targets["redis-exporter"] = exporter
    jobs = []
    for job in config["scrape_configs"]:
        statics = []
        for sc in job["static_configs"]:
            container = sc["labels"]["container"]
            if container in targets:
                statics.append({**sc, "targets": [targets[container]]})
        if statics:
            jobs.append({**job, "static_configs": statics})
    config["scrape_configs"] = jobs
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_file)]
    return config


class Prometheus:
    """A Prometheus server child on loopback, with a throwaway TSDB."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        from samserve.procs.common import free_port

        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.api("query", query=expr)
        result = data["result"]
        # A scalar or string result is one [time, value] pair: it is data.
        return result if data["resultType"] in ("vector", "matrix") else [result]

    def stop(self) -> None:
        _stop(self.proc, timeout=10)


@pytest.fixture(scope="module")
def prometheus(stack, redis_exporter, tmp_path_factory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found: apt-get install prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    (rule,) = by_kind(render("prod"), "PrometheusRule")
    spec = json.loads(json.dumps(rule["spec"]))
    for group in spec["groups"]:
        group["interval"] = "1s"
        for r in group["rules"]:
            r["expr"] = concrete(r["expr"], WINDOW)
            r.pop("for", None)
    rules_file = workdir / "samserve.rules.yml"
    rules_file.write_text(yaml.safe_dump(spec))
    prom = Prometheus(binary, workdir, _scrape_config(stack, rules_file, redis_exporter))
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _drive_traffic(stack: dict[str, Any], seconds: float) -> None:
    """Embed and segment through the SDK: misses, hits in both tiers, NOT_FOUND, a burst."""
    from samserve_client import SamClient

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96 + 8 * i, 128, 3), dtype=np.uint8) for i in range(4)]
    deadline = time.monotonic() + seconds
    with SamClient(embedding_address=stack["embedding"], decoder_address=stack["decoder"]) as c:
        while time.monotonic() < deadline:
            fresh = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
            c.segment(fresh, points=[[10, 20]], labels=[1])  # NOT_FOUND, Embed, Segment
            for img in images:
                c.segment(img, points=[[20, 30], [5, 5]], labels=[1, 0])
                c.embed(img)  # stored: a Redis hit on the embedding side
            burst = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            with ThreadPoolExecutor(4) as pool:  # concurrent Embeds of one image: coalesced
                list(pool.map(c.embed, [burst] * 4))


def test_every_expression_returns_data(stack, prometheus, redis_exporter, capsys):
    prom = prometheus
    expected_up = (3 if "triton" in stack else 2) + (redis_exporter is not None)
    _wait(lambda: len(prom.query("up == 1")) == expected_up, 60, f"{expected_up} targets up")
    _drive_traffic(stack, seconds=8)
    # Two scrapes after the last call, so every counter's last increase is stored.
    time.sleep(2.5)

    gpu = "triton" in stack and bool(prom.query("nv_gpu_utilization"))
    # Metrics the alerts name ahead of the servers (samserve_degraded): listed, not failed.
    exported = {
        r["metric"]["__name__"]
        for r in prom.query('count by (__name__) ({__name__=~"samserve_.+"})')
    }
    skipped: list[str] = []
    failures: list[str] = []
    checked = 0
    for e in expressions(render("prod")):
        if e.needs_triton and "triton" not in stack:
            skipped.append(f"{e.where} (no Triton: {stack['encoder_note']})")
            continue
        if e.needs_gpu and not gpu:
            skipped.append(f"{e.where} (Triton runs without a GPU here)")
            continue
        if e.needs_redis_exporter and redis_exporter is None:
            skipped.append(f"{e.where} (no prometheus-redis-exporter: apt-get install it)")
            continue
        missing = set(re.findall(r"\bsamserve_[a-z_]+", e.expr)) - exported
        if missing:
            skipped.append(f"{e.where} (this server does not export {sorted(missing)} yet)")
            continue
        expr = concrete(e.expr, WINDOW)
        try:
            if e.alert:
                prom.query(expr)  # must evaluate; returns nothing while not firing
                for operand in condition_operands(expr):
                    checked += 1
                    if not prom.query(operand):
                        failures.append(f"{e.where}: operand returned no data:\n  {operand}")
            else:
                checked += 1
                if not prom.query(expr):
                    failures.append(f"{e.where}: no data:\n  {expr}")
        except AssertionError as err:
            failures.append(f"{e.where}: {err}")
    with capsys.disabled():
        print(f"\n[prometheus live] encoder={stack['encoder']}: {checked} expressions returned "
              f"data, {len(skipped)} skipped")  # fmt: skip
        for s in skipped:
            print(f"[prometheus live] skipped: {s}")
    assert not failures, "\n".join(failures)
    assert checked >= 20


def test_rules_evaluate_without_errors(stack, prometheus):
    def evaluated() -> bool:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r.get("lastEvaluation", "").startswith("20") for r in rules)

    _wait(evaluated, 30, "every rule evaluated")
    groups = prometheus.api("rules")["groups"]
    bad = [f"{r['name']}: {r.get('lastError')}" for g in groups for r in g["rules"]
           if r["health"] != "ok"]  # fmt: skip
    assert not bad, bad
    targets = prometheus.api("targets")["activeTargets"]
    assert all(t["health"] == "up" for t in targets), [
        (t["labels"], t["lastError"]) for t in targets
    ]
    labels = {t["labels"]["container"]: t["labels"] for t in targets}
    for container in ("embedding", "decoder"):
        assert labels[container]["namespace"] == "samserve"
        assert labels[container]["app_kubernetes_io_part_of"] == "samserve"


def test_gpu_busy_arithmetic(stack, prometheus):
    """The Triton autoscaler's busy-time query against the raw counter, under batching load.

    Triton counts a batch's compute time once per request, and the python backend adds the
    time a batch waits for the previous one: the raw rate exceeds 1 for one model instance,
    the batch-size correction (raw / average batch) still can while the instance is
    saturated, and the trigger caps each pod at 1. So: raw > 1, corrected = raw / batch,
    busy = min(corrected, 1).
    """
    if "triton" not in stack:
        pytest.skip(f"no Triton: {stack['encoder_note']}")
    from samserve_client import SamClient

    (so,) = [s for s in by_kind(render("prod"), "ScaledObject")
             if s["metadata"]["name"] == "samserve-triton"]  # fmt: skip
    busy_query = next(t for t in so["spec"]["triggers"] if t["name"] == "gpu-busy")["metadata"]
    busy_expr = concrete(busy_query["query"], WINDOW)
    selector = 'namespace="samserve", model=~"sam_image_encoder_.*"'
    raw_expr = f"sum(rate(nv_inference_compute_infer_duration_us{{{selector}}}[{WINDOW}])) / 1e6"
    batch_expr = (
        f"sum(rate(nv_inference_request_success{{{selector}}}[{WINDOW}]))"
        f" / sum(rate(nv_inference_exec_count{{{selector}}}[{WINDOW}]))"
    )

    rng = np.random.default_rng(7)
    deadline = time.monotonic() + 24
    with SamClient(embedding_address=stack["embedding"], decoder_address=stack["decoder"]) as c:

        def embed_fresh(_: int) -> None:
            c.embed(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))

        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:
                list(pool.map(embed_fresh, range(16)))
    time.sleep(2.5)

    def value(expr: str) -> float:
        result = prometheus.query(expr)
        assert result, f"no data: {expr}"
        return float(result[0]["value"][1])

    busy, raw, batch = value(busy_expr), value(raw_expr), value(batch_expr)
    corrected = raw / batch
    print(f"\n[prometheus live] raw {raw:.3f}, batch {batch:.2f}, corrected {corrected:.3f}, "
          f"busy {busy:.3f}")  # fmt: skip
    assert batch > 1.5, "the load formed no batches; the check would prove nothing"
    assert raw > 1.05, "Triton did not count a batch's time once per request"
    assert busy == pytest.approx(min(corrected, 1.0), rel=0.02)
    assert busy <= 1.0
