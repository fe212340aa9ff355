"""Policy checks on the rendered overlays: what a reviewer would otherwise check by eye.

Resources, probes and the restricted securityContext on every container; pinned images;
NetworkPolicy paths for every Service port, scrape port and dependency (and none for what
should stay closed); probes and grace periods that fit the drain; load balancing, Triton's
model control, PDBs, spreading and autoscaler targets; the local scrape configuration
equivalent to the PodMonitors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    NAMESPACE,
    OVERLAYS,
    WORKLOAD_KINDS,
    Doc,
    by_kind,
    containers,
    find,
    render,
    selects,
)

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

SERVICES = {"embedding": (50051, "samserve.v1.EmbeddingService"),
            "decoder": (50052, "samserve.v1.DecoderService")}  # fmt: skip

_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def _bytes(quantity: str) -> float:
    m = _MEMORY.match(str(quantity))
    assert m, f"unexpected memory quantity {quantity!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


@pytest.fixture(params=OVERLAYS)
def docs(request) -> list[Doc]:
    return render(request.param)


def test_every_container_has_resources(docs):
    for c in containers(docs):
        res = c.spec.get("resources", {})
        requests, limits = res.get("requests", {}), res.get("limits", {})
        assert {"cpu", "memory"} <= set(requests), f"{c.where}: requests.cpu/memory"
        # Memory limits are required (an OOM stays inside the pod); CPU limits are left out on
        # purpose (CFS throttling adds tail latency), as the manifests' comments say.
        assert "memory" in limits, f"{c.where}: limits.memory"
        assert _bytes(limits["memory"]) >= _bytes(requests["memory"]), c.where


def test_every_container_has_probes(docs):
    for c in containers(docs):
        if c.init:
            continue
        assert "readinessProbe" in c.spec, f"{c.where}: readinessProbe"
        assert "livenessProbe" in c.spec, f"{c.where}: livenessProbe"
        assert "startupProbe" in c.spec, f"{c.where}: startupProbe (slow model or data load)"


def test_services_use_native_grpc_readiness(docs):
    for name, (port, health) in SERVICES.items():
        c = next(c for c in containers(docs) if c.spec["name"] == name)
        probe = c.spec["readinessProbe"]["grpc"]
        assert probe == {"port": port, "service": health}
        # Liveness must not follow Redis: restarting every pod would not bring Redis back.
        assert "grpc" not in c.spec["livenessProbe"]


def test_triton_probes_and_model_control(docs):
    triton = find(docs, "Deployment", "samserve-triton")
    pod = triton["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "triton")
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--model-control-mode=none" in c["args"]
    assert "--strict-readiness=true" in c["args"]
    init = pod["initContainers"][0]
    assert init["image"] == c["image"]
    assert "sam_image_encoder_${SAMSERVE_MODEL}" in " ".join(init["args"])


def _restricted_violations(c: Any) -> list[str]:
    pod_sc = c.pod.get("securityContext", {})
    sc = c.spec.get("securityContext", {})
    bad = []
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        bad.append("runAsNonRoot")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
        bad.append("runAsUser (numeric, non-zero)")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        bad.append("seccompProfile RuntimeDefault")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad.append("allowPrivilegeEscalation: false")
    if sc.get("privileged"):
        bad.append("not privileged")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        bad.append("capabilities.drop ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        bad.append("no added capabilities")
    if sc.get("readOnlyRootFilesystem") is not True:
        bad.append("readOnlyRootFilesystem")
    if any("hostPort" in p for p in c.spec.get("ports", [])):
        bad.append("no hostPort")
    return bad


def test_restricted_security_context(docs):
    problems = [f"{c.where}: {', '.join(v)}" for c in containers(docs)
                if (v := _restricted_violations(c))]  # fmt: skip
    assert not problems, "\n".join(problems)
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = w["spec"]["template"]["spec"]
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), f"{w['metadata']['name']}: {key}"
        assert not any("hostPath" in v for v in pod.get("volumes", []))
        assert pod.get("automountServiceAccountToken") is False, w["metadata"]["name"]
    ns = find(docs, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_pinned(docs):
    for c in containers(docs):
        image = c.spec["image"]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{c.where}: {image} has no tag"
        assert tag != "latest", f"{c.where}: {image}"
        assert c.spec.get("imagePullPolicy") != "Always" or tag, c.where


# --- NetworkPolicy ------------------------------------------------------------------------


def _pod_labels(docs: list[Doc], component: str) -> dict[str, str]:
    for w in by_kind(docs, *WORKLOAD_KINDS):
        labels = w["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") == component:
            return dict(labels)
    raise AssertionError(f"no workload for component {component}")


def _container_ports(docs: list[Doc], labels: dict[str, str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for w in by_kind(docs, *WORKLOAD_KINDS):
        if w["spec"]["template"]["metadata"]["labels"] == labels:
            for c in w["spec"]["template"]["spec"]["containers"]:
                ports.update({p["name"]: p["containerPort"] for p in c.get("ports", [])})
    return ports


def _port_matches(rule_ports: list[Doc] | None, port: int, names: dict[str, int]) -> bool:
    if not rule_ports:
        return True  # no ports: every port
    for p in rule_ports:
        value = p.get("port")
        if value is None or value == port or names.get(str(value)) == port:
            return True
    return False


def _peer_matches(peer: Doc, labels: dict[str, str], namespace_labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        if namespace_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
            return False
    elif not selects(ns_sel, namespace_labels):
        return False
    return selects(peer.get("podSelector", {}), labels)


def _allowed(
    docs: list[Doc],
    direction: str,
    subject: dict[str, str],
    peer: dict[str, str],
    peer_ns: dict[str, str],
    port: int,
    port_names: dict[str, int],
) -> bool:
    """NetworkPolicy semantics for one direction of one connection (subject in NAMESPACE)."""
    policy_type = "Ingress" if direction == "ingress" else "Egress"
    peers_key = "from" if direction == "ingress" else "to"
    isolating = [
        np for np in by_kind(docs, "NetworkPolicy")
        if policy_type in np["spec"].get("policyTypes", ["Ingress"])
        and selects(np["spec"]["podSelector"], subject)
    ]  # fmt: skip
    if not isolating:
        return True
    for np in isolating:
        for rule in np["spec"].get(direction, []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, peer, peer_ns) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, port_names):
                return True
    return False


HERE = {"kubernetes.io/metadata.name": NAMESPACE}


def connection_allowed(
    docs: list[Doc],
    src: dict[str, str],
    dst: dict[str, str],
    port: int,
    *,
    src_ns: dict[str, str] = HERE,
    dst_ns: dict[str, str] = HERE,
) -> bool:
    """Whether src may open a TCP connection to dst:port (egress of src, ingress of dst).

    Policies live in NAMESPACE only, so a pod elsewhere is not isolated on its side.
    """
    names = _container_ports(docs, dst)
    egress = src_ns != HERE or _allowed(docs, "egress", src, dst, dst_ns, port, names)
    ingress = dst_ns != HERE or _allowed(docs, "ingress", dst, src, src_ns, port, names)
    return egress and ingress


CLIENT_NS = {"kubernetes.io/metadata.name": "backend", "samserve.io/client": "true"}
OTHER_NS = {"kubernetes.io/metadata.name": "elsewhere"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
MONITORING_NS = {"kubernetes.io/metadata.name": "monitoring"}


def test_default_deny(docs):
    deny = find(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")


def test_every_service_port_has_a_network_policy_path(docs):
    """Each Service port is reachable by someone: ingress to its pods on that port."""
    missing = []
    for svc in by_kind(docs, "Service"):
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in by_kind(docs, *WORKLOAD_KINDS)
                if selects({"matchLabels": svc["spec"]["selector"]},
                           w["spec"]["template"]["metadata"]["labels"])]  # fmt: skip
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for labels in pods:
            names = _container_ports(docs, labels)
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                number = names.get(target, target) if isinstance(target, str) else target
                has_path = any(
                    rule.get("from") and _port_matches(rule.get("ports"), number, names)
                    for np in by_kind(docs, "NetworkPolicy")
                    if selects(np["spec"]["podSelector"], labels)
                    for rule in np["spec"].get("ingress", [])
                )
                if not has_path:
                    missing.append(f"{svc['metadata']['name']}:{p['port']} -> {number}")
    assert not missing, f"Service ports without a NetworkPolicy ingress path: {missing}"


def test_needed_paths_open_and_others_closed(docs):
    emb, dec = _pod_labels(docs, "embedding"), _pod_labels(docs, "decoder")
    tri, red = _pod_labels(docs, "triton"), _pod_labels(docs, "redis")
    client = {"app": "backend"}
    allowed = lambda *a, **k: connection_allowed(docs, *a, **k)  # noqa: E731
    # clients -> services
    assert allowed(client, emb, 50051, src_ns=CLIENT_NS)
    assert allowed(client, dec, 50052, src_ns=CLIENT_NS)
    assert allowed({"samserve.io/client": "true"}, dec, 50052)
    # embedding -> Triton; services -> Redis
    assert allowed(emb, tri, 8001)
    assert allowed(emb, red, 6379)
    assert allowed(dec, red, 6379)
    # Prometheus -> metrics ports
    for labels, port in ((emb, 9101), (dec, 9102), (tri, 8002)):
        assert allowed(PROMETHEUS, labels, port, src_ns=MONITORING_NS), port
    # closed: the rest
    assert not allowed(dec, tri, 8001)
    assert not allowed(tri, red, 6379)
    assert not allowed(client, red, 6379, src_ns=CLIENT_NS)
    assert not allowed(client, tri, 8001, src_ns=CLIENT_NS)
    assert not allowed(PROMETHEUS, red, 6379, src_ns=MONITORING_NS)
    assert not allowed(emb, tri, 8000)  # Triton's HTTP API is for the kubelet's probes only
    assert not allowed(red, emb, 50051)


def test_strict_client_policy_in_prod():
    docs = render("prod")
    emb = _pod_labels(docs, "embedding")
    assert not connection_allowed(docs, {"app": "x"}, emb, 50051, src_ns=OTHER_NS)
    assert not connection_allowed(docs, {"app": "x"}, emb, 50051)


def test_dns_egress_for_every_pod(docs):
    dns = {"k8s-app": "kube-dns"}
    kube_system = {"kubernetes.io/metadata.name": "kube-system"}
    for component in ("embedding", "decoder", "triton", "redis"):
        labels = _pod_labels(docs, component)
        assert _allowed(docs, "egress", labels, dns, kube_system, 53, {}), component


# --- load balancing, grace periods, disruption, autoscaling -------------------------------


def test_grpc_services_headless_and_clients_use_dns_scheme(docs):
    for name in ("samserve-embedding", "samserve-decoder", "samserve-triton"):
        assert find(docs, "Service", name)["spec"]["clusterIP"] == "None", name
    cfg = find(docs, "ConfigMap", "samserve-config")["data"]
    assert cfg["SAMSERVE_TRITON_URL"].startswith("dns:///samserve-triton:")


def test_termination_grace_covers_drain(docs):
    cfg = find(docs, "ConfigMap", "samserve-config")["data"]
    drain = float(cfg["SAMSERVE_GRACE"])
    for name in SERVICES:
        w = find(docs, "Deployment", f"samserve-{name}")
        pod = w["spec"]["template"]["spec"]
        c = pod["containers"][0]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + 5, name
    triton = find(docs, "Deployment", "samserve-triton")["spec"]["template"]["spec"]
    exit_timeout = next(
        int(a.split("=", 1)[1]) for a in triton["containers"][0]["args"]
        if a.startswith("--exit-timeout-secs=")
    )  # fmt: skip
    assert triton["terminationGracePeriodSeconds"] > exit_timeout


def test_redis_is_a_bounded_persistent_cache(docs):
    redis = find(docs, "StatefulSet", "samserve-redis")
    conf = find(docs, "ConfigMap", "samserve-redis-config")["data"]["redis.conf"]
    assert re.search(r"^maxmemory-policy allkeys-lru$", conf, re.M)
    assert re.search(r"^save \d+ \d+", conf, re.M)
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = redis["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    maxmemory = env["REDIS_MAXMEMORY"]
    m = re.fullmatch(r"(\d+)(mb|gb)", maxmemory)
    assert m, maxmemory
    limit = _bytes(c["resources"]["limits"]["memory"])
    # Room for the fork's copy-on-write while a snapshot is written.
    assert int(m.group(1)) * {"mb": 2**20, "gb": 2**30}[m.group(2)] <= 0.7 * limit


def test_prod_disruption_budgets_spread_and_autoscalers():
    docs = render("prod")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind(docs, "ScaledObject")}
    for w in by_kind(docs, "Deployment"):
        name, labels = w["metadata"]["name"], w["spec"]["template"]["metadata"]["labels"]
        assert any(selects(p["spec"]["selector"], labels) for p in pdbs), f"{name}: no PDB"
        pod = w["spec"]["template"]["spec"]
        assert pod["affinity"]["podAntiAffinity"], name
        assert pod["topologySpreadConstraints"], name
        # The autoscaler owns the count: a replicas field would reset it on every apply.
        assert name in scaled, f"{name}: no ScaledObject"
        assert "replicas" not in w["spec"], name
        assert scaled[name]["spec"]["minReplicaCount"] >= 2, name
    triton = scaled["samserve-triton"]["spec"]["triggers"]
    assert any("nv_inference_pending_request_count" in t["metadata"]["query"] for t in triton)
    assert any("nv_inference_queue_duration_us" in t["metadata"]["query"] for t in triton)
    decoder = scaled["samserve-decoder"]["spec"]["triggers"]
    assert all("samserve_inflight_requests" in t["metadata"]["query"] for t in decoder)
    for so in scaled.values():
        for t in so["spec"]["triggers"]:
            assert f'namespace="{NAMESPACE}"' in t["metadata"]["query"], so["metadata"]["name"]


# --- monitoring ---------------------------------------------------------------------------


def test_local_scrape_config_matches_podmonitors():
    """prometheus-local.yml scrapes what the PodMonitors select, with the operator's labels."""
    docs = render("prod")
    local = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-local.yml").read_text())
    jobs = {j["job_name"]: j for j in local["scrape_configs"]}
    for pm in by_kind(docs, "PodMonitor"):
        job = jobs.get(f"{NAMESPACE}/{pm['metadata']['name']}")
        assert job is not None, f"no local job for PodMonitor {pm['metadata']['name']}"
        target_labels = [t["labels"] for t in job["static_configs"]]
        for w in by_kind(docs, *WORKLOAD_KINDS):
            labels = w["spec"]["template"]["metadata"]["labels"]
            if not selects(pm["spec"]["selector"], labels):
                continue
            for ep in pm["spec"]["podMetricsEndpoints"]:
                assert job.get("metrics_path", "/metrics") == ep.get("path", "/metrics")
                for c in w["spec"]["template"]["spec"]["containers"]:
                    if not any(p["name"] == ep["port"] for p in c.get("ports", [])):
                        continue
                    match = [t for t in target_labels if t["container"] == c["name"]]
                    assert match, f"local job {job['job_name']} lacks container {c['name']}"
                    for t in match:
                        assert t["namespace"] == NAMESPACE
                        assert {"pod", "endpoint"} <= set(t)
                        for pod_label in pm["spec"].get("podTargetLabels", []):
                            key = re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)
                            assert t[key] == labels[pod_label], key


def test_network_policy_admits_every_scrape():
    docs = render("prod")
    for pm in by_kind(docs, "PodMonitor"):
        for w in by_kind(docs, *WORKLOAD_KINDS):
            labels = w["spec"]["template"]["metadata"]["labels"]
            if selects(pm["spec"]["selector"], labels):
                ports = _container_ports(docs, labels)
                for ep in pm["spec"]["podMetricsEndpoints"]:
                    assert connection_allowed(
                        docs, PROMETHEUS, labels, ports[ep["port"]], src_ns=MONITORING_NS
                    ), f"{w['metadata']['name']}:{ep['port']}"


def test_prometheus_local_file_is_plain_yaml():
    path = Path(DEPLOY / "monitoring" / "prometheus-local.yml")
    config = yaml.safe_load(path.read_text())
    assert set(config) == {"global", "scrape_configs"}
