"""Policy checks on the rendered overlays: what a reviewer would otherwise check by eye.

Every rule runs on every overlay and on prod with each component (manifests.VARIANTS).
Resources, probes and the restricted securityContext on every container; pinned images;
NetworkPolicy paths for every Service port, scrape port and dependency (and none for what
should stay closed), DNS per platform; grace periods longer than the longest call; load
balancing, Triton's model control, PDBs, spreading and autoscaler targets; volumes many pods
share are never ReadWriteOnce; GPU pods select a bf16 GPU class with a new enough driver and
CPU pods stay off GPU nodes, judged against real platforms' node labels; requests that fit
named node shapes; hashed ConfigMaps; Redis sized to its data; the local scrape
configuration equivalent to the PodMonitors.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    HASH_SUFFIX,
    NAMESPACE,
    PROD_VARIANTS,
    VARIANTS,
    WORKLOAD_KINDS,
    Doc,
    by_kind,
    config,
    containers,
    find,
    pod_spec,
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


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return str(request.param)


@pytest.fixture
def docs(variant) -> list[Doc]:
    return render(variant)


@pytest.fixture(params=PROD_VARIANTS)
def prod_docs(request) -> list[Doc]:
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
        if c.init or c.workload["kind"] == "Job":  # a Job's container runs to completion
            continue
        assert "readinessProbe" in c.spec, f"{c.where}: readinessProbe"
        assert "livenessProbe" in c.spec, f"{c.where}: livenessProbe"
        assert "startupProbe" in c.spec, f"{c.where}: startupProbe (slow model or data load)"


def test_services_use_native_grpc_readiness(docs):
    """The kubelet's native gRPC probe, which cannot speak TLS: on the service port while it
    is plaintext (dev), on the health-only plaintext port once it serves TLS (prod)."""
    for name, (port, health) in SERVICES.items():
        c = next(c for c in containers(docs) if c.spec["name"] == name)
        env = {e["name"]: e.get("value") for e in c.spec.get("env", [])}
        tls = "SAMSERVE_TLS_CERT" in env
        probe_port = int(env["SAMSERVE_HEALTH_PORT"]) if tls else port
        assert c.spec["readinessProbe"]["grpc"] == {"port": probe_port, "service": health}
        # Liveness must not follow Redis: restarting every pod would not bring Redis back.
        assert "grpc" not in c.spec["livenessProbe"]
        if tls:
            # The health port is for the kubelet: no Service and no NetworkPolicy rule
            # exposes it to pods.
            for svc in by_kind(docs, "Service"):
                assert all(p.get("targetPort") != "health" and p["port"] != probe_port
                           for p in svc["spec"]["ports"]), svc["metadata"]["name"]  # fmt: skip
            for np in by_kind(docs, "NetworkPolicy"):
                for rule in np["spec"].get("ingress", []):
                    for p in rule.get("ports", []):
                        assert p.get("port") not in (probe_port, "health"), np["metadata"]["name"]


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
    # The variant's model (samserve.core.variants.triton_model_name), "." and "+" spelled out.
    script = " ".join(init["args"])
    name = "sam_image_encoder_$(printf '%s' \"$SAMSERVE_MODEL\" | sed 's/[.]/_/g; s/[+]/_plus/g')"
    assert name in script


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
#: An address on the internet (TEST-NET-3), as an object store's would be.
OUTSIDE = "203.0.113.10"


def components_of(variant: str) -> set[str]:
    """The components a variant uses: named after '+', or listed by its overlay."""
    overlay, *added = variant.split("+")
    kustomization = yaml.safe_load(
        (DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    listed = {
        str(Path(c)).split("components/", 1)[1]
        for c in kustomization.get("components", [])
        if "components/" in c
    }
    return listed | set(added)


def prometheus_peer(variant: str) -> tuple[dict[str, str], dict[str, str]]:
    """Pod and namespace labels of the Prometheus that scrapes ``variant``."""
    name, namespace = "prometheus", "monitoring"
    if "prometheus-stack" in components_of(variant):
        values_file = DEPLOY / "components" / "prometheus-stack" / "values.yaml"
        values = yaml.safe_load(values_file.read_text())["data"]
        name, namespace = values["prometheusPodName"], values["namespace"]
    return {"app.kubernetes.io/name": name}, {"kubernetes.io/metadata.name": namespace}


def _ip_in_block(peer: Doc, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    block = peer.get("ipBlock")
    if not block:
        return False
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))


def egress_to_ip_allowed(docs: list[Doc], subject: dict[str, str], ip: str, port: int) -> bool:
    """Whether a pod labelled ``subject`` may send to ``ip:port`` (a non-pod address)."""
    address = ipaddress.ip_address(ip)
    isolating = [
        np for np in by_kind(docs, "NetworkPolicy")
        if "Egress" in np["spec"].get("policyTypes", ["Ingress"])
        and selects(np["spec"]["podSelector"], subject)
    ]  # fmt: skip
    if not isolating:
        return True
    for np in isolating:
        for rule in np["spec"].get("egress", []):
            peers = rule.get("to")
            peer_ok = not peers or any(_ip_in_block(p, address) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, {}):
                return True
    return False


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


def test_needed_paths_open_and_others_closed(variant, docs):
    emb, dec = _pod_labels(docs, "embedding"), _pod_labels(docs, "decoder")
    tri = _pod_labels(docs, "triton")
    prometheus, prometheus_ns = prometheus_peer(variant)
    if not by_kind(docs, "StatefulSet"):
        # An external Redis (components/redis-external): the services reach its addresses,
        # nothing else does, and there is no Redis pod.
        external = yaml.safe_load(
            (DEPLOY / "components" / "redis-external" / "values.yaml").read_text()
        )["data"]
        ip = str(next(ipaddress.ip_network(external["cidr"]).hosts()))
        port = int(external["port"])
        assert egress_to_ip_allowed(docs, emb, ip, port)
        assert egress_to_ip_allowed(docs, dec, ip, port)
        assert not egress_to_ip_allowed(docs, tri, ip, port)
        return
    red = _pod_labels(docs, "redis")
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
    # Prometheus -> metrics ports (Redis's through its exporter)
    for labels, port in ((emb, 9101), (dec, 9102), (tri, 8002), (red, 9121)):
        assert allowed(prometheus, labels, port, src_ns=prometheus_ns), port
    # closed: the rest
    assert not allowed(dec, tri, 8001)
    assert not allowed(tri, red, 6379)
    assert not allowed(client, red, 6379, src_ns=CLIENT_NS)
    assert not allowed(client, tri, 8001, src_ns=CLIENT_NS)
    assert not allowed(prometheus, red, 6379, src_ns=prometheus_ns)
    assert not allowed(emb, tri, 8000)  # Triton's HTTP API is for the kubelet's probes only
    assert not allowed(red, emb, 50051)
    # Only the checkpoint fill Job leaves the cluster, and only for HTTPS.
    for w in by_kind(docs, *WORKLOAD_KINDS):
        labels = w["spec"]["template"]["metadata"]["labels"]
        fill = labels.get("app.kubernetes.io/component") == "checkpoint-fill"
        assert egress_to_ip_allowed(docs, labels, OUTSIDE, 443) == fill, w["metadata"]["name"]
        assert not egress_to_ip_allowed(docs, labels, OUTSIDE, 80), w["metadata"]["name"]
        if fill:
            assert not allowed(labels, red, 6379) and not allowed(labels, tri, 8001)


def test_strict_client_policy_in_prod(prod_docs):
    emb = _pod_labels(prod_docs, "embedding")
    assert not connection_allowed(prod_docs, {"app": "x"}, emb, 50051, src_ns=OTHER_NS)
    assert not connection_allowed(prod_docs, {"app": "x"}, emb, 50051)


#: Where pods send DNS queries, per DNS component: NodeLocal DNSCache's link-local address,
#: GKE Cloud DNS's metadata server. Neither is a pod, so only an ipBlock admits it.
LINK_LOCAL_DNS = {"dns/nodelocal-dnscache": "169.254.20.10", "dns/cloud-dns": "169.254.169.254"}


def test_dns_egress_for_every_pod(variant, docs):
    dns = {"k8s-app": "kube-dns"}
    kube_system = {"kubernetes.io/metadata.name": "kube-system"}
    used = components_of(variant)
    for w in by_kind(docs, *WORKLOAD_KINDS):
        labels, name = w["spec"]["template"]["metadata"]["labels"], w["metadata"]["name"]
        assert _allowed(docs, "egress", labels, dns, kube_system, 53, {}), name
        for component, ip in LINK_LOCAL_DNS.items():
            expected = component in used
            assert egress_to_ip_allowed(docs, labels, ip, 53) == expected, (name, component)


# --- load balancing, grace periods, disruption, autoscaling -------------------------------


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _container(pod: Doc, name: str) -> Doc:
    return next(c for c in pod["containers"] if c["name"] == name)


def _sdk_deadline() -> float:
    from samserve_client._channel import DEFAULT_TIMEOUT

    return float(DEFAULT_TIMEOUT)


def _export_deadline() -> float:
    """`samserve export --timeout`'s default: the longest a SegmentEverything call runs."""
    import argparse

    from samserve_client.cli.export import add_cli_args

    parser = argparse.ArgumentParser()
    add_cli_args(parser, {})
    (action,) = [a for a in parser._actions if "--timeout" in a.option_strings]
    return float(action.default)


def test_grpc_services_headless_and_clients_use_dns_scheme(docs):
    for name in ("samserve-embedding", "samserve-decoder", "samserve-triton"):
        assert find(docs, "Service", name)["spec"]["clusterIP"] == "None", name
    assert config(docs)["SAMSERVE_TRITON_URL"].startswith("dns:///samserve-triton:")


def test_grace_exceeds_the_longest_call(docs):
    """Each pod's drain outlasts the longest call it may be serving, and the pod's grace
    covers preStop + drain. Embed: Triton's timeout or the SDK's deadline; the decoder:
    SegmentEverything under `samserve export`'s deadline; Triton: the Embed deadline."""
    triton_timeout = float(config(docs)["SAMSERVE_TRITON_TIMEOUT"])
    longest = {"embedding": max(triton_timeout, _sdk_deadline()), "decoder": _export_deadline()}
    for name, call in longest.items():
        pod = pod_spec(find(docs, "Deployment", f"samserve-{name}"))
        c = _container(pod, name)
        drain = float(_env(c)["SAMSERVE_GRACE"])
        assert drain > call, f"{name}: drains {drain} s, its longest call takes {call} s"
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10, name
        assert "SAMSERVE_GRACE" not in config(docs), "per service, not shared"
    triton = pod_spec(find(docs, "Deployment", "samserve-triton"))
    c = _container(triton, "triton")
    exit_timeout = next(
        int(a.split("=", 1)[1]) for a in c["args"] if a.startswith("--exit-timeout-secs=")
    )
    assert exit_timeout > triton_timeout
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 10  # endpoints and DNS answers move before Triton refuses new work
    assert triton["terminationGracePeriodSeconds"] >= pre_stop + exit_timeout + 10


_REDIS_MEMORY = {"mb": 2**20, "gb": 2**30}
#: Disk throughput assumed for snapshots: gp3's baseline is 125 MB/s, pd-balanced's similar.
SNAPSHOT_BYTES_PER_S = 100e6


def test_redis_is_a_cache_sized_to_its_data(docs):
    """maxmemory below the limit (fork copy-on-write), snapshots that take at most 5% of the
    time between them, a disk for two snapshots, a grace for a final one (docs/deploy.md)."""
    if not by_kind(docs, "StatefulSet"):
        pytest.skip("an external Redis (components/redis-external)")
    redis = find(docs, "StatefulSet", "samserve-redis")
    conf = config(docs, "samserve-redis-config")["redis.conf"]
    assert re.search(r"^maxmemory-policy allkeys-lru$", conf, re.M)
    assert re.search(r"^appendonly no$", conf, re.M)
    pod = pod_spec(redis)
    c = _container(pod, "redis")
    assert c["command"][-2:] == ["--save", "$(REDIS_SAVE)"]
    assert "$(REDIS_MAXMEMORY)" in c["command"]
    env = _env(c)
    m = re.fullmatch(r"(\d+)(mb|gb)", env["REDIS_MAXMEMORY"])
    assert m, env["REDIS_MAXMEMORY"]
    maxmemory = int(m.group(1)) * _REDIS_MEMORY[m.group(2)]
    assert maxmemory <= 0.7 * _bytes(c["resources"]["limits"]["memory"])
    save = [int(x) for x in env["REDIS_SAVE"].split()]
    assert save and len(save) % 2 == 0, env["REDIS_SAVE"]
    snapshot_s = maxmemory / SNAPSHOT_BYTES_PER_S
    assert snapshot_s <= 0.05 * min(save[::2]), (snapshot_s, env["REDIS_SAVE"])
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert _bytes(claim["spec"]["resources"]["requests"]["storage"]) >= 2.2 * maxmemory
    assert pod["terminationGracePeriodSeconds"] >= 2 * snapshot_s
    exporter = _container(pod, "redis-exporter")
    assert any(
        re.fullmatch(r"-redis\.addr=rediss?://127\.0\.0\.1:6379", a) for a in exporter["args"]
    )
    assert any(p["name"] == "metrics" for p in exporter["ports"])


def test_prod_disruption_budgets_spread_and_autoscalers(prod_docs):
    docs = prod_docs
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for p in pdbs:
        # A crash-looping pod must never block a drain.
        assert p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", p["metadata"]["name"]
    if by_kind(docs, "StatefulSet"):
        redis = find(docs, "StatefulSet", "samserve-redis")["spec"]["template"]["metadata"]
        (redis_pdb,) = [p for p in pdbs if selects(p["spec"]["selector"], redis["labels"])]
        assert redis_pdb["spec"]["minAvailable"] == 1
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind(docs, "ScaledObject")}
    for w in by_kind(docs, "Deployment"):
        name, labels = w["metadata"]["name"], w["spec"]["template"]["metadata"]["labels"]
        assert any(selects(p["spec"]["selector"], labels) for p in pdbs), f"{name}: no PDB"
        pod = pod_spec(w)
        assert pod["affinity"]["podAntiAffinity"], name
        assert pod["topologySpreadConstraints"], name
        # The autoscaler owns the count: a replicas field would reset it on every apply.
        assert name in scaled, f"{name}: no ScaledObject"
        assert "replicas" not in w["spec"], name
        assert scaled[name]["spec"]["minReplicaCount"] >= 2, name
    for so in scaled.values():
        # AverageValue everywhere: fallback works, and thresholds are per pod.
        assert so["spec"]["fallback"]["replicas"] >= so["spec"]["minReplicaCount"]
        for t in so["spec"]["triggers"]:
            assert t["metricType"] == "AverageValue", so["metadata"]["name"]
            assert f'namespace="{NAMESPACE}"' in t["metadata"]["query"], so["metadata"]["name"]
    triton = {
        t["name"]: t["metadata"]["query"] for t in scaled["samserve-triton"]["spec"]["triggers"]
    }
    assert "nv_inference_compute_infer_duration_us" in triton["gpu-busy"]
    assert "nv_inference_exec_count" in triton["gpu-busy"]
    assert "nv_inference_pending_request_count" in triton["queue-depth"]
    assert not any("queue_duration" in q for q in triton.values())
    # Decoders scale on calls in flight per core: the query divides by the CPUs a pod requests.
    (decoder,) = scaled["samserve-decoder"]["spec"]["triggers"]
    assert "samserve_inflight_requests" in decoder["metadata"]["query"]
    divisor = re.search(r"\)\s*/\s*([\d.]+)\s*$", decoder["metadata"]["query"])
    assert divisor, decoder["metadata"]["query"]
    c = _container(pod_spec(find(docs, "Deployment", "samserve-decoder")), "decoder")
    assert float(divisor.group(1)) == _cpu(c["resources"]["requests"]["cpu"])


def _cpu(quantity: str) -> float:
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


# --- volumes, ConfigMaps ---------------------------------------------------------------------


def _volumes(w: Doc) -> list[Doc]:
    return list(pod_spec(w).get("volumes", []))


def test_shared_volumes_are_never_read_write_once(docs):
    """A claim mounted by more than one pod template, or by an autoscaled Deployment, must be
    ReadWriteMany or ReadOnlyMany; serving pods mount the checkpoint volume read-only."""
    modes = {p["metadata"]["name"]: set(p["spec"]["accessModes"])
             for p in by_kind(docs, "PersistentVolumeClaim")}  # fmt: skip
    users: dict[str, list[Doc]] = {}
    for w in by_kind(docs, *WORKLOAD_KINDS):
        for v in _volumes(w):
            if "persistentVolumeClaim" in v:
                users.setdefault(v["persistentVolumeClaim"]["claimName"], []).append(w)
    for claim, workloads in users.items():
        shared = len(workloads) > 1 or any(w["kind"] == "Deployment" for w in workloads)
        if shared and claim in modes:
            assert modes[claim] & {"ReadWriteMany", "ReadOnlyMany"}, (claim, modes[claim])
            assert "ReadWriteOnce" not in modes[claim], claim
        for w in workloads:
            if w["kind"] == "Job":
                continue  # the fill Job writes
            (v,) = [
                v
                for v in _volumes(w)
                if v.get("persistentVolumeClaim", {}).get("claimName") == claim
            ]
            assert v["persistentVolumeClaim"].get("readOnly") is True, (
                w["metadata"]["name"],
                claim,
            )
            for c in containers([w]):
                for m in c.spec.get("volumeMounts", []):
                    if m["name"] == v["name"]:
                        assert m.get("readOnly") is True, c.where


def _configmaps_read(w: Doc) -> set[str]:
    pod, names = pod_spec(w), set()
    for c in pod.get("initContainers", []) + pod["containers"]:
        names |= {s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                names.add(ref["name"])
    for v in pod.get("volumes", []):
        if "configMap" in v:
            names.add(v["configMap"]["name"])
        for source in v.get("projected", {}).get("sources", []):
            if "configMap" in source:
                names.add(source["configMap"]["name"])
    return names


def test_every_configmap_pods_read_is_hashed(docs):
    """A content-hash suffix on every ConfigMap a pod reads: editing one rolls its pods."""
    defined = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    read = set()
    for w in by_kind(docs, *WORKLOAD_KINDS):
        for name in _configmaps_read(w):
            assert HASH_SUFFIX.search(name) and name in defined, f"{w['metadata']['name']}: {name}"
            read.add(HASH_SUFFIX.sub("", name))
    assert {"samserve-config", "samserve-model"} <= read
    assert bool(by_kind(docs, "StatefulSet")) == ("samserve-redis-config" in read)


# --- GPU nodes and node shapes ---------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A node as its platform labels it."""

    labels: dict[str, str]
    gpu: bool
    #: A GPU node Triton may run on: bf16 (Ampere or newer) and an R580+ driver.
    triton_ok: bool = False
    #: Recognisable as a GPU node only with this component (no GPU label of its own).
    needs: str | None = None


def _gfd(compute: str, driver: str) -> dict[str, str]:
    return {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.compute.major": compute, "nvidia.com/cuda.driver.major": driver,
            "node.kubernetes.io/instance-type": "gpu-node"}  # fmt: skip


def _gke(accelerator: str, driver: str) -> dict[str, str]:
    return {"cloud.google.com/gke-accelerator": accelerator,
            "cloud.google.com/gke-gpu-driver-version": driver,
            "cloud.google.com/gke-nodepool": "gpu-pool"}  # fmt: skip


def _karpenter(gpu: str, instance: str) -> dict[str, str]:
    return {"karpenter.k8s.aws/instance-gpu-name": gpu,
            "karpenter.k8s.aws/instance-gpu-count": "1",
            "node.kubernetes.io/instance-type": instance}  # fmt: skip


NODES = {
    # NVIDIA GPU Feature Discovery (GPU Operator): compute capability and driver as labels.
    "gfd-l4-r580": Node(_gfd("8", "580"), gpu=True, triton_ok=True),
    "gfd-h100-r590": Node(_gfd("9", "590"), gpu=True, triton_ok=True),
    "gfd-a100-r570": Node(_gfd("8", "570"), gpu=True),  # driver older than CUDA 13.0's
    "gfd-t4-r580": Node(_gfd("7", "580"), gpu=True),  # Turing: no bf16
    # GKE: accelerator type and driver channel.
    "gke-l4-latest": Node(_gke("nvidia-l4", "latest"), gpu=True, triton_ok=True),
    "gke-h100-latest": Node(_gke("nvidia-h100-80gb", "latest"), gpu=True, triton_ok=True),
    "gke-l4-default": Node(_gke("nvidia-l4", "default"), gpu=True),
    "gke-t4-latest": Node(_gke("nvidia-tesla-t4", "latest"), gpu=True),
    # EKS: Karpenter, Auto Mode, and a managed node group with only its instance type.
    "karpenter-g6": Node(_karpenter("l4", "g6.xlarge"), gpu=True, triton_ok=True),
    "karpenter-g4dn": Node(_karpenter("t4", "g4dn.xlarge"), gpu=True),
    "auto-g6e": Node(
        {
            "eks.amazonaws.com/instance-gpu-name": "l40s",
            "eks.amazonaws.com/instance-gpu-count": "1",
            "node.kubernetes.io/instance-type": "g6e.xlarge",
        },
        gpu=True,
        triton_ok=True,
    ),
    "mng-g5": Node(
        {"node.kubernetes.io/instance-type": "g5.xlarge", "eks.amazonaws.com/nodegroup": "gpu"},
        gpu=True,
        triton_ok=True,
        needs="gpu-class/eks",
    ),
    "mng-g4dn": Node(
        {
            "node.kubernetes.io/instance-type": "g4dn.xlarge",
            "eks.amazonaws.com/nodegroup": "gpu-old",
        },
        gpu=True,
        needs="gpu-class/eks",
    ),
    # CPU nodes.
    "gke-cpu": Node(
        {
            "cloud.google.com/gke-nodepool": "default-pool",
            "node.kubernetes.io/instance-type": "n2-standard-8",
        },
        gpu=False,
    ),
    "karpenter-cpu": Node(
        {
            "karpenter.k8s.aws/instance-family": "m7i",
            "karpenter.k8s.aws/instance-gpu-count": "0",
            "node.kubernetes.io/instance-type": "m7i.2xlarge",
        },
        gpu=False,
    ),
    "mng-cpu": Node({"node.kubernetes.io/instance-type": "m7i.2xlarge"}, gpu=False),
    "kubeadm-cpu": Node({"kubernetes.io/hostname": "worker-1"}, gpu=False),
}


def _requirement_matches(req: Doc, labels: dict[str, str]) -> bool:
    key, op, values = req["key"], req["operator"], req.get("values", [])
    value = labels.get(key)
    if op == "In":
        return value in values
    if op == "NotIn":
        return value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        if value is None or not value.lstrip("-").isdigit():
            return False
        return int(value) > int(values[0]) if op == "Gt" else int(value) < int(values[0])
    raise AssertionError(f"unknown operator {op}")


def schedulable(pod: Doc, node: Node) -> bool:
    """Whether ``pod``'s required node affinity and nodeSelector admit ``node``."""
    if any(node.labels.get(k) != v for k, v in pod.get("nodeSelector", {}).items()):
        return False
    required = (
        pod.get("affinity", {}).get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )  # fmt: skip
    if not required:
        return True
    return any(
        all(_requirement_matches(r, node.labels) for r in term.get("matchExpressions", []))
        for term in required["nodeSelectorTerms"]
    )


def _uses_gpu(pod: Doc) -> bool:
    return any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
               for c in pod["containers"])  # fmt: skip


def test_gpu_pods_select_a_bf16_gpu_class(variant, docs):
    """Triton lands only where bf16 runs and the image's driver is: never on a T4 or under an
    R570 driver, whichever labels the platform puts on its nodes."""
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = pod_spec(w)
        if not _uses_gpu(pod):
            continue
        admitted = {name for name, n in NODES.items() if schedulable(pod, n)}
        assert admitted, f"{w['metadata']['name']} fits none of the known GPU nodes"
        wrong = {name for name in admitted if not NODES[name].triton_ok}
        assert not wrong, f"{w['metadata']['name']} would run on {sorted(wrong)}"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_cpu_pods_stay_off_gpu_nodes(variant, docs):
    used = components_of(variant)
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = pod_spec(w)
        if _uses_gpu(pod):
            continue
        name = w["metadata"]["name"]
        for node_name, node in NODES.items():
            if not node.gpu:
                assert schedulable(pod, node), f"{name} cannot run on CPU node {node_name}"
            elif node.needs is None or node.needs in used:
                assert not schedulable(pod, node), f"{name} may land on GPU node {node_name}"
        assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


#: Named single-GPU node shapes and what a pod can request on them: allocatable (capacity
#: less the kubelet's reservations: GKE's and EKS's published formulas) less the GPU nodes'
#: DaemonSets (kube-proxy, CNI, device plugin, DCGM exporter, logging, node exporter, CSI
#: node drivers: about 0.6 CPU and 1.5 GiB). docs/deploy.md, "Node shapes", works them out.
NODE_SHAPES = {
    "GKE g2-standard-4 (4 vCPU, 16 GiB, 1 L4)": (3.92 - 0.6, 13.3 - 1.5),
    "EKS g6.xlarge / g5.xlarge (4 vCPU, 16 GiB, 1 L4 / A10G)": (3.92 - 0.6, 14.3 - 1.5),
    "GKE g2-standard-8 (8 vCPU, 32 GiB, 1 L4)": (7.91 - 0.6, 28.5 - 1.5),
    "EKS g6.2xlarge (8 vCPU, 32 GiB, 1 L4)": (7.91 - 0.6, 29.5 - 1.5),
}


def _pod_requests(pod: Doc) -> tuple[float, float]:
    def total(cs: list[Doc]) -> tuple[float, float]:
        reqs = [c.get("resources", {}).get("requests", {}) for c in cs]
        return (sum(_cpu(r.get("cpu", "0")) for r in reqs),
                sum(_bytes(r.get("memory", "0")) for r in reqs) / 2**30)  # fmt: skip

    app = total(pod["containers"])
    inits = [total([c]) for c in pod.get("initContainers", [])]
    return (max([app[0], *(i[0] for i in inits)]), max([app[1], *(i[1] for i in inits)]))


def test_triton_fits_named_node_shapes(prod_docs):
    cpu, memory = _pod_requests(pod_spec(find(prod_docs, "Deployment", "samserve-triton")))
    for shape, (free_cpu, free_gib) in NODE_SHAPES.items():
        assert cpu <= free_cpu and memory <= free_gib, f"{cpu} CPU, {memory} GiB: {shape}"


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


def test_network_policy_admits_every_scrape(variant, docs):
    prometheus, prometheus_ns = prometheus_peer(variant)
    for pm in by_kind(docs, "PodMonitor"):
        for w in by_kind(docs, *WORKLOAD_KINDS):
            labels = w["spec"]["template"]["metadata"]["labels"]
            if selects(pm["spec"]["selector"], labels):
                ports = _container_ports(docs, labels)
                for ep in pm["spec"]["podMetricsEndpoints"]:
                    assert connection_allowed(
                        docs, prometheus, labels, ports[ep["port"]], src_ns=prometheus_ns
                    ), f"{w['metadata']['name']}:{ep['port']}"


def test_prometheus_stack_component_moves_every_reference():
    """Namespace, pod label, release label and KEDA's address all follow values.yaml."""
    docs = render("prod+prometheus-stack")
    values = yaml.safe_load(
        (DEPLOY / "components" / "prometheus-stack" / "values.yaml").read_text()
    )["data"]
    for kind in ("PodMonitor", "PrometheusRule"):
        for d in by_kind(docs, kind):
            assert d["metadata"]["labels"]["release"] == values["release"]
    for so in by_kind(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            assert t["metadata"]["serverAddress"] == values["serverAddress"]
    text = yaml.safe_dump(find(docs, "NetworkPolicy", "metrics-from-prometheus"))
    assert "monitoring" not in text and values["namespace"] in text


def test_prometheus_local_file_is_plain_yaml():
    path = Path(DEPLOY / "monitoring" / "prometheus-local.yml")
    config_ = yaml.safe_load(path.read_text())
    assert set(config_) == {"global", "scrape_configs"}


# --- TLS, tokens, Secrets as files (prod) ----------------------------------------------------


def test_env_references_come_first(docs):
    """$(VAR) in env, command and args expands only from variables defined before it."""
    for c in containers(docs):
        defined: set[str] = set()
        for src in c.spec.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            cm = [d for d in docs if d["metadata"]["name"] == ref.get("name")]
            for d in cm:
                defined |= set(d.get("data", {}))
        for e in c.spec.get("env", []):
            for var in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                assert var in defined, f"{c.where}: {e['name']} uses $({var}) before it is set"
            defined.add(e["name"])
        for arg in [*c.spec.get("command", []), *c.spec.get("args", [])]:
            if c.spec.get("command", [None])[0] in ("/bin/sh", "sh"):
                continue  # a shell script's own $(...)
            for var in re.findall(r"\$\((\w+)\)", arg):
                assert var in defined, f"{c.where}: $({var}) in {arg!r}"


def test_prod_speaks_tls_everywhere(prod_docs):
    docs = prod_docs
    mounts: dict[str, dict[str, str]] = {}
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = pod_spec(w)
        secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for v in secrets.values():
            # Mounted as files the pod's group reads and nobody else does.
            assert v.get("defaultMode") == 0o440, (w["metadata"]["name"], v["secretName"])
        for c in containers([w]):
            paths = {m["mountPath"]: m["name"] for m in c.spec.get("volumeMounts", [])}
            mounts[c.where] = {
                p: secrets[n]["secretName"] for p, n in paths.items() if n in secrets
            }
            # No secret reaches a container as a plain environment value.
            for e in c.spec.get("env", []):
                value = re.sub(r"\$\(\w+\)", "", e.get("value", ""))
                assert "password" not in value.lower(), c.where
    for name in SERVICES:
        c = next(c for c in containers(docs) if c.spec["name"] == name)
        env = {e["name"]: e.get("value", "") for e in c.spec["env"]}
        secret_of = mounts[c.where]
        for key in ("SAMSERVE_TLS_CERT", "SAMSERVE_TLS_KEY", "SAMSERVE_AUTH_TOKENS",
                    "SAMSERVE_REDIS_TLS_CA"):  # fmt: skip
            path = env[key]
            assert any(path.startswith(m + "/") for m in secret_of), (c.where, key, path)
        assert env["SAMSERVE_REDIS_URL"].startswith(("rediss://", "rediss+cluster://"))
        assert f"samserve-{name}:$(REDIS_PASSWORD)@" in env["SAMSERVE_REDIS_URL"]
    emb = next(c for c in containers(docs) if c.spec["name"] == "embedding")
    emb_env = {e["name"] for e in emb.spec["env"]}
    assert {
        "SAMSERVE_TRITON_TLS_CA",
        "SAMSERVE_TRITON_TLS_CERT",
        "SAMSERVE_TRITON_TLS_KEY",
    } <= emb_env
    triton = _container(pod_spec(find(docs, "Deployment", "samserve-triton")), "triton")
    args = triton["args"]
    assert "--grpc-use-ssl-mutual=true" in args
    restricted = next(a for a in args if a.startswith("--grpc-restricted-protocol="))
    closed = restricted.split("=", 1)[1].split(":", 1)[0].split(",")
    assert {"shared-memory", "statistics", "trace", "model-repository"} <= set(closed)
    assert "inference" not in closed and "health" not in closed
    # Server-side keepalive that lets the embedding service's pings through.
    assert "--grpc-keepalive-permit-without-calls=true" in args
    assert "--grpc-http2-min-recv-ping-interval-without-data=10000" in args
    statefulsets = by_kind(docs, "StatefulSet")
    if statefulsets:
        redis = _container(pod_spec(statefulsets[0]), "redis")["command"]
        flag = lambda name: redis[redis.index(name) + 1]  # noqa: E731
        assert flag("--port") == "0" and flag("--tls-port") == "6379"
        assert flag("--tls-auth-clients") == "yes" and flag("--aclfile") == "/acl/users.acl"
        assert "--requirepass" not in redis


def test_dev_stays_plaintext():
    docs = render("dev")
    assert not by_kind(docs, "Certificate", "Issuer")
    for name in SERVICES:
        c = next(c for c in containers(docs) if c.spec["name"] == name)
        assert "SAMSERVE_TLS_CERT" not in {e["name"] for e in c.spec["env"]}


def test_triton_flags_are_tritonservers():
    """Every flag the manifests pass Triton is one the local tritonserver (2.51) knows."""
    try:
        from samserve.procs.triton import find_tritonserver, server_env
    except ImportError as e:
        pytest.skip(f"samserve.procs.triton: {e}")
    dist = find_tritonserver()
    if dist is None:
        pytest.skip("no tritonserver (pip install 'samserve[triton]')")
    import subprocess

    proc = subprocess.run([str(dist.binary), "--help"], capture_output=True, text=True,
                          env=server_env(dist), timeout=60)  # fmt: skip
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", proc.stdout + proc.stderr, re.M))
    assert "--grpc-use-ssl-mutual" in known, proc.stdout[-2000:]
    for variant in ("dev", "prod"):
        triton = _container(
            pod_spec(find(render(variant), "Deployment", "samserve-triton")), "triton"
        )
        for arg in triton["args"][1:]:
            assert arg.split("=", 1)[0] in known, arg
