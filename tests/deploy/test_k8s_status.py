"""``samserve.cli.status``: the deployment health report behind ``samserve status``.

No cluster runs here. The Kubernetes API is faked at its boundary: fake ``CoreV1Api``,
``AppsV1Api`` and ``DiscoveryV1Api`` objects with the same method names and signatures, that
return the ``kubernetes`` package's own model objects (``V1PodList``, ``V1EndpointSliceList``,
...) and raise its ``ApiException``. Triton's HTTP API is exercised for real against a
``tritonserver`` (the nvidia-pytriton wheel's) when one is installed.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass, field

import pytest

from samserve.cli.status import (
    DEFAULT_SELECTOR,
    Apis,
    add_cli_args,
    deployment_health,
    format_table,
    run_status,
    triton_health,
    url_http,
)

k = pytest.importorskip("kubernetes.client", reason="pip install kubernetes")
from kubernetes.client.exceptions import ApiException  # noqa: E402

NS = "samserve"
LABELS = {"app.kubernetes.io/name": "samserve", "app.kubernetes.io/part-of": "samserve"}


def pod(name, component, *, ready=True, phase="Running", restarts=0, waiting=None):
    state = k.V1ContainerState(
        waiting=k.V1ContainerStateWaiting(reason=waiting) if waiting else None,
        running=None if waiting else k.V1ContainerStateRunning(),
    )
    return k.V1Pod(
        metadata=k.V1ObjectMeta(
            name=name, namespace=NS, labels={**LABELS, "app.kubernetes.io/component": component}
        ),
        spec=k.V1PodSpec(containers=[k.V1Container(name=component)], node_name="node-1"),
        status=k.V1PodStatus(
            phase=phase,
            conditions=[k.V1PodCondition(type="Ready", status="True" if ready else "False")],
            container_statuses=[
                k.V1ContainerStatus(
                    name=component, ready=ready, restart_count=restarts, image="i:1",
                    image_id="", state=state,
                )
            ],
        ),
    )  # fmt: skip


def deployment(name, replicas, ready):
    return k.V1Deployment(
        metadata=k.V1ObjectMeta(name=name, namespace=NS, labels=LABELS),
        spec=k.V1DeploymentSpec(
            replicas=replicas, selector=k.V1LabelSelector(), template=k.V1PodTemplateSpec()
        ),
        status=k.V1DeploymentStatus(
            replicas=replicas, ready_replicas=ready or None, available_replicas=ready or None,
            updated_replicas=replicas,
        ),
    )  # fmt: skip


def statefulset(name, replicas, ready):
    return k.V1StatefulSet(
        metadata=k.V1ObjectMeta(name=name, namespace=NS, labels=LABELS),
        spec=k.V1StatefulSetSpec(
            replicas=replicas, selector=k.V1LabelSelector(), service_name=name,
            template=k.V1PodTemplateSpec(),
        ),
        status=k.V1StatefulSetStatus(
            replicas=replicas, ready_replicas=ready, available_replicas=ready,
            updated_replicas=replicas,
        ),
    )  # fmt: skip


def service(name, port):
    return k.V1Service(
        metadata=k.V1ObjectMeta(name=name, namespace=NS, labels=LABELS),
        spec=k.V1ServiceSpec(
            cluster_ip="None", ports=[k.V1ServicePort(name="grpc", port=port, protocol="TCP")]
        ),
    )


def endpoint_slice(service_name, pods_ready):
    return k.V1EndpointSlice(
        address_type="IPv4",
        metadata=k.V1ObjectMeta(
            name=f"{service_name}-abcde", labels={"kubernetes.io/service-name": service_name}
        ),
        endpoints=[
            k.V1Endpoint(
                addresses=[f"10.0.0.{i}"],
                conditions=k.V1EndpointConditions(ready=is_ready),
                target_ref=k.V1ObjectReference(kind="Pod", name=pod_name, namespace=NS),
            )
            for i, (pod_name, is_ready) in enumerate(pods_ready)
        ],
    )


@dataclass
class ProxyResponse:
    """What ``connect_*_proxy_with_path(..., _preload_content=False)`` returns (urllib3)."""

    status: int
    data: bytes


@dataclass
class FakeCore:
    pods: list
    services: list
    #: (pod, path) -> (status, body)
    triton: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)

    def list_namespaced_pod(self, namespace, label_selector=None):
        self.calls.append(("pods", namespace, label_selector))
        return k.V1PodList(items=self.pods)

    def list_namespaced_service(self, namespace, label_selector=None):
        self.calls.append(("services", namespace, label_selector))
        return k.V1ServiceList(items=self.services)

    def _proxy(self, name, namespace, path, _preload_content=True):
        assert _preload_content is False, "the raw body, not the client's repr of it"
        pod_name, port = name.split(":")
        assert port == "8000" and namespace == NS
        status, body = self.triton.get((pod_name, path), (404, b"not found"))
        if not 200 <= status < 300:
            raise ApiException(status=status, reason="proxy")
        return ProxyResponse(status, body)

    connect_get_namespaced_pod_proxy_with_path = _proxy
    connect_post_namespaced_pod_proxy_with_path = _proxy


@dataclass
class FakeApps:
    deployments: list
    statefulsets: list

    def list_namespaced_deployment(self, namespace, label_selector=None):
        return k.V1DeploymentList(items=self.deployments)

    def list_namespaced_stateful_set(self, namespace, label_selector=None):
        return k.V1StatefulSetList(items=self.statefulsets)


@dataclass
class FakeDiscovery:
    slices: list

    def list_namespaced_endpoint_slice(self, namespace, label_selector=None):
        key, _, value = label_selector.partition("=")
        assert key == "kubernetes.io/service-name"
        return k.V1EndpointSliceList(
            items=[s for s in self.slices if s.metadata.labels[key] == value]
        )


MODEL = "sam_image_encoder_vit_h"
INDEX_READY = json.dumps([{"name": MODEL, "version": "1", "state": "READY"}]).encode()


def healthy_cluster() -> Apis:
    pods = [
        pod("samserve-embedding-a", "embedding"),
        pod("samserve-decoder-a", "decoder"),
        pod("samserve-decoder-b", "decoder"),
        pod("samserve-triton-a", "triton"),
        pod("samserve-redis-0", "redis"),
    ]
    core = FakeCore(
        pods=pods,
        services=[service("samserve-embedding", 50051), service("samserve-decoder", 50052),
                  service("samserve-triton", 8001), service("samserve-redis", 6379)],
        triton={("samserve-triton-a", "v2/health/ready"): (200, b""),
                ("samserve-triton-a", "v2/repository/index"): (200, INDEX_READY)},
    )  # fmt: skip
    apps = FakeApps(
        deployments=[deployment("samserve-embedding", 1, 1), deployment("samserve-decoder", 2, 2),
                     deployment("samserve-triton", 1, 1)],
        statefulsets=[statefulset("samserve-redis", 1, 1)],
    )  # fmt: skip
    discovery = FakeDiscovery(
        [endpoint_slice("samserve-embedding", [("samserve-embedding-a", True)]),
         endpoint_slice("samserve-decoder", [("samserve-decoder-a", True),
                                             ("samserve-decoder-b", True)]),
         endpoint_slice("samserve-triton", [("samserve-triton-a", True)]),
         endpoint_slice("samserve-redis", [("samserve-redis-0", True)])]
    )  # fmt: skip
    return Apis(core, apps, discovery)


def status_args(*argv: str, env: dict | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_args(parser, env or {})
    return parser.parse_args(list(argv))


def test_healthy_deployment():
    apis = healthy_cluster()
    report = deployment_health(NS, apis=apis)
    assert report.ok, report.problems
    assert [w.name for w in report.workloads] == [
        "samserve-decoder", "samserve-embedding", "samserve-triton", "samserve-redis",
    ]  # fmt: skip
    decoder = next(s for s in report.services if s.name == "samserve-decoder")
    assert decoder.ready == ("samserve-decoder-a", "samserve-decoder-b")
    (triton,) = report.triton
    assert triton.source == "samserve-triton-a" and triton.ready
    assert [(m.name, m.state) for m in triton.models] == [(MODEL, "READY")]
    assert ("pods", NS, DEFAULT_SELECTOR) in apis.core.calls


def test_unhealthy_deployment_lists_every_problem():
    apis = healthy_cluster()
    apis.apps.deployments[1] = deployment("samserve-decoder", 2, 1)
    apis.core.pods[2] = pod("samserve-decoder-b", "decoder", ready=False, restarts=7,
                            waiting="CrashLoopBackOff")  # fmt: skip
    apis.discovery.slices[0] = endpoint_slice(
        "samserve-embedding", [("samserve-embedding-a", False)]
    )
    apis.core.triton[("samserve-triton-a", "v2/health/ready")] = (503, b"")
    apis.core.triton[("samserve-triton-a", "v2/repository/index")] = (200, json.dumps(
        [{"name": MODEL, "version": "1", "state": "UNAVAILABLE", "reason": "CUDA OOM"}]
    ).encode())  # fmt: skip
    report = deployment_health(NS, apis=apis)
    assert not report.ok
    assert report.problems == (
        "deployment/samserve-decoder: 1/2 ready",
        "service/samserve-embedding: no ready endpoint",
        "triton samserve-triton-a: not ready",
        f"triton samserve-triton-a: model {MODEL} is UNAVAILABLE CUDA OOM",
    )
    bad = next(p for p in report.pods if p.name == "samserve-decoder-b")
    assert (bad.ready, bad.restarts, bad.reason) == (False, 7, "decoder: CrashLoopBackOff")
    table = format_table(report)
    assert "UNHEALTHY" in table and "CrashLoopBackOff" in table and "UNAVAILABLE" in table


def test_triton_proxy_errors_are_reported_not_raised():
    apis = healthy_cluster()
    del apis.core.triton[("samserve-triton-a", "v2/repository/index")]
    report = deployment_health(NS, apis=apis)
    assert report.problems == ("triton samserve-triton-a: repository index: HTTP 404",)


def test_pending_triton_pod_is_not_asked():
    apis = healthy_cluster()
    apis.core.pods[3] = pod("samserve-triton-a", "triton", ready=False, phase="Pending")
    apis.apps.deployments[2] = deployment("samserve-triton", 1, 0)
    report = deployment_health(NS, apis=apis)
    assert report.triton == ()
    assert "deployment/samserve-triton: 0/1 ready" in report.problems


def test_empty_namespace_is_unhealthy():
    report = deployment_health(NS, apis=Apis(FakeCore([], []), FakeApps([], []), FakeDiscovery([])))
    assert report.problems == ("no Deployment or StatefulSet matches the selector",)


def test_run_status_table_and_json():
    out = io.StringIO()
    assert run_status(status_args("-n", NS), apis=healthy_cluster(), out=out) == 0
    text = out.getvalue()
    assert "HEALTHY" in text and "samserve-decoder-a" in text and MODEL in text
    out = io.StringIO()
    assert run_status(status_args("-o", "json"), apis=healthy_cluster(), out=out) == 0
    data = json.loads(out.getvalue())
    assert data["ok"] is True and data["namespace"] == NS
    assert data["triton"][0]["models"][0]["state"] == "READY"


def test_run_status_exit_codes(capsys):
    apis = healthy_cluster()
    apis.apps.deployments[0] = deployment("samserve-embedding", 1, 0)
    assert run_status(status_args(), apis=apis, out=io.StringIO()) == 1

    class Refusing(FakeCore):
        def list_namespaced_pod(self, namespace, label_selector=None):
            raise ApiException(status=403, reason="Forbidden")

    refusing = Apis(Refusing([], []), apis.apps, apis.discovery)
    assert run_status(status_args(), apis=refusing, out=io.StringIO()) == 2
    assert "Forbidden" in capsys.readouterr().err


def test_run_status_without_a_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "no-kubeconfig"
    assert run_status(status_args("--kubeconfig", str(missing)), out=io.StringIO()) == 2
    assert "cannot read the cluster" in capsys.readouterr().err


def test_cli_args_env_fallbacks():
    ns = status_args(
        env={"SAMSERVE_K8S_NAMESPACE": "sam-prod", "SAMSERVE_K8S_TRITON_URL": "http://t"}
    )
    assert (ns.namespace, ns.selector, ns.output, ns.triton_url) == (
        "sam-prod", DEFAULT_SELECTOR, "table", "http://t",
    )  # fmt: skip


def test_triton_url_unreachable():
    health = triton_health("http://127.0.0.1:9", url_http("http://127.0.0.1:9", timeout=1))
    assert not health.ok and health.error and "URLError" in health.error


@pytest.mark.triton
@pytest.mark.timeout(120)
def test_triton_health_against_a_real_tritonserver():
    """The HTTP calls work against real Triton in model control mode none (as deployed)."""
    triton_server = pytest.importorskip("samserve.procs.triton")
    if triton_server.find_tritonserver() is None:
        pytest.skip("no tritonserver: pip install 'samserve[triton]' (nvidia-pytriton)")
    triton = triton_server.TritonProcess.start(
        triton_server.TritonModelOptions(
            "tiny", "random", device="cpu", parameters={"warmup": "false"}
        )
    )
    try:
        apis = healthy_cluster()
        report = deployment_health(NS, apis=apis, triton_url=triton.http_url)
        (health,) = report.triton
        assert health.ready and health.ok, health
        assert [(m.name, m.state) for m in health.models] == [("sam_image_encoder_tiny", "READY")]
    finally:
        triton.stop()
