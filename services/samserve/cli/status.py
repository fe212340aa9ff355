"""``samserve status``: the health of a samserve deployment on Kubernetes.

Reads what the cluster says (workloads, pods, EndpointSlices of each Service) through the
``kubernetes`` package, and asks each Triton pod whether its models are ready through Triton's
HTTP API (``/v2/health/ready``, ``/v2/repository/index``), either through the API server's pod
proxy or at a URL given by the caller (e.g. after ``kubectl port-forward``).

The API objects are passed in (``KubeApis``) so that tests fake the cluster at the API
boundary with the package's own model classes; :func:`load_apis` builds the real ones from a
kubeconfig or the in-cluster service account. Nothing here imports ``kubernetes`` at import
time: the CLI builds its parser without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TextIO

from samserve.cli.table import table_lines
from samserve.config import DEFAULT_NAMESPACE, DEFAULT_SELECTOR, StatusSettings

COMPONENT_LABEL = "app.kubernetes.io/component"
TRITON_COMPONENT = "triton"
#: Triton's HTTP port (containerPort "http" in deploy/base/triton.yaml).
TRITON_HTTP_PORT = 8000

#: ``(path, method) -> (status, body)``: one HTTP call to a Triton server.
TritonHttp = Callable[[str, str], tuple[int, bytes]]


class KubeApis(Protocol):
    """The three API groups the report reads (``kubernetes.client`` objects or fakes)."""

    @property
    def core(self) -> Any: ...  # CoreV1Api: pods, services, pod proxy
    @property
    def apps(self) -> Any: ...  # AppsV1Api: deployments, statefulsets
    @property
    def discovery(self) -> Any: ...  # DiscoveryV1Api: endpointslices


@dataclass(frozen=True, slots=True)
class Apis:
    """A :class:`KubeApis` holding ``CoreV1Api``, ``AppsV1Api`` and ``DiscoveryV1Api``."""

    core: Any
    apps: Any
    discovery: Any


@dataclass(frozen=True, slots=True)
class WorkloadHealth:
    """A Deployment or StatefulSet: how many replicas are wanted, ready and up to date."""

    kind: str
    name: str
    desired: int
    ready: int
    available: int
    updated: int

    @property
    def ok(self) -> bool:
        return self.desired > 0 and self.ready >= self.desired and self.available >= self.desired


@dataclass(frozen=True, slots=True)
class PodHealth:
    """One pod: phase, readiness, restarts, and why a container is waiting (if one is)."""

    name: str
    component: str
    phase: str
    ready: bool
    restarts: int
    node: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A Service and the pods behind it, from its EndpointSlices."""

    name: str
    ports: tuple[str, ...]
    ready: tuple[str, ...]
    not_ready: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return len(self.ready) > 0


@dataclass(frozen=True, slots=True)
class TritonModel:
    """One model as Triton's repository index reports it (state READY, UNAVAILABLE, ...)."""

    name: str
    version: str
    state: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True, slots=True)
class TritonHealth:
    """One Triton server: ready per ``/v2/health/ready``, and the state of each model."""

    source: str
    ready: bool
    models: tuple[TritonModel, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.ready and bool(self.models) and all(m.ok for m in self.models)


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """Everything :func:`deployment_health` found; ``ok`` when every part is healthy."""

    namespace: str
    selector: str
    workloads: tuple[WorkloadHealth, ...] = ()
    pods: tuple[PodHealth, ...] = ()
    services: tuple[ServiceEndpoints, ...] = ()
    triton: tuple[TritonHealth, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``ok`` included)."""
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _problems(
    workloads: Sequence[WorkloadHealth],
    services: Sequence[ServiceEndpoints],
    triton: Sequence[TritonHealth],
) -> tuple[str, ...]:
    found: list[str] = []
    if not workloads:
        found.append("no Deployment or StatefulSet matches the selector")
    for w in workloads:
        if not w.ok:
            found.append(f"{w.kind.lower()}/{w.name}: {w.ready}/{w.desired} ready")
    for s in services:
        if not s.ok:
            found.append(f"service/{s.name}: no ready endpoint")
    for t in triton:
        if t.error:
            found.append(f"triton {t.source}: {t.error}")
        elif not t.ready:
            found.append(f"triton {t.source}: not ready")
        for m in t.models:
            if not m.ok:
                found.append(f"triton {t.source}: model {m.name} is {m.state} {m.reason}".strip())
        if t.ready and not t.models and not t.error:
            found.append(f"triton {t.source}: no model in the repository")
    return tuple(found)


def _workloads(apis: KubeApis, namespace: str, selector: str) -> list[WorkloadHealth]:
    out: list[WorkloadHealth] = []
    listings = (
        ("Deployment", apis.apps.list_namespaced_deployment),
        ("StatefulSet", apis.apps.list_namespaced_stateful_set),
    )
    for kind, list_fn in listings:
        for item in list_fn(namespace, label_selector=selector).items:
            spec, status = item.spec, item.status
            desired = 1 if spec.replicas is None else int(spec.replicas)
            out.append(
                WorkloadHealth(
                    kind=kind,
                    name=item.metadata.name,
                    desired=desired,
                    ready=int(status.ready_replicas or 0),
                    available=int(getattr(status, "available_replicas", None) or 0),
                    updated=int(status.updated_replicas or 0),
                )
            )
    return sorted(out, key=lambda w: (w.kind, w.name))


def _pod_health(pod: Any) -> PodHealth:
    status = pod.status
    statuses = list(status.container_statuses or [])
    ready = bool(statuses) and all(c.ready for c in statuses)
    for cond in status.conditions or []:
        if cond.type == "Ready":
            ready = cond.status == "True"
    reason = None
    for c in [*(status.init_container_statuses or []), *statuses]:
        waiting = c.state.waiting if c.state is not None else None
        if waiting is not None and waiting.reason:
            reason = f"{c.name}: {waiting.reason}"
            break
    if pod.metadata.deletion_timestamp is not None:
        reason = "Terminating"
    labels = pod.metadata.labels or {}
    return PodHealth(
        name=pod.metadata.name,
        component=labels.get(COMPONENT_LABEL, ""),
        phase=status.phase or "Unknown",
        ready=ready,
        restarts=sum(int(c.restart_count or 0) for c in statuses),
        node=pod.spec.node_name if pod.spec is not None else None,
        reason=reason,
    )


def _endpoints(apis: KubeApis, namespace: str, selector: str) -> list[ServiceEndpoints]:
    out: list[ServiceEndpoints] = []
    for svc in apis.core.list_namespaced_service(namespace, label_selector=selector).items:
        name = svc.metadata.name
        ports = tuple(
            f"{p.name or p.port}:{p.port}/{p.protocol or 'TCP'}" for p in svc.spec.ports or []
        )
        ready: list[str] = []
        not_ready: list[str] = []
        slices = apis.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={name}"
        )
        for eps in slices.items:
            for ep in eps.endpoints or []:
                ref = ep.target_ref.name if ep.target_ref is not None else ",".join(ep.addresses)
                # conditions.ready is None when unknown: count it as ready, as kube-proxy does.
                is_ready = ep.conditions is None or ep.conditions.ready is not False
                (ready if is_ready else not_ready).append(ref)
        out.append(ServiceEndpoints(name, ports, tuple(sorted(ready)), tuple(sorted(not_ready))))
    return sorted(out, key=lambda s: s.name)


def triton_health(source: str, http: TritonHttp) -> TritonHealth:
    """Ask one Triton server whether it is ready and what state each model is in.

    Args:
        source: what to call this server in the report (a pod name or a URL).
        http: performs one call, ``http(path, method) -> (status, body)``, with ``path``
            relative to the server root (``v2/health/ready``).

    Returns:
        The server's readiness and its repository index (``POST v2/repository/index``,
        available in every model control mode). Errors are reported, never raised.
    """
    try:
        status, _ = http("v2/health/ready", "GET")
        ready = status == 200
        status, body = http("v2/repository/index", "POST")
        if status != 200:
            return TritonHealth(source, ready, error=f"repository index: HTTP {status}")
        models = tuple(
            TritonModel(
                name=str(m.get("name", "")),
                version=str(m.get("version", "")),
                state=str(m.get("state", "UNKNOWN")),
                reason=str(m.get("reason", "")),
            )
            for m in json.loads(body or b"[]")
        )
        return TritonHealth(source, ready, models)
    except (OSError, ValueError) as e:
        return TritonHealth(source, False, error=f"{type(e).__name__}: {e}")


def url_http(base_url: str, timeout: float = 5.0) -> TritonHttp:
    """A :data:`TritonHttp` for a Triton server at ``base_url`` (``http://host:8000``)."""
    base = base_url.rstrip("/")

    def call(path: str, method: str) -> tuple[int, bytes]:
        data = b"{}" if method == "POST" else None
        req = urllib.request.Request(f"{base}/{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    return call


def pod_proxy_http(core: Any, namespace: str, pod: str, port: int = TRITON_HTTP_PORT) -> TritonHttp:
    """A :data:`TritonHttp` through the API server's pod proxy (needs ``pods/proxy`` rights).

    ``_preload_content=False`` returns the raw body: the client would otherwise parse the JSON
    and hand back its Python ``repr``.
    """
    from kubernetes.client.exceptions import ApiException

    def call(path: str, method: str) -> tuple[int, bytes]:
        fn = (
            core.connect_get_namespaced_pod_proxy_with_path
            if method == "GET"
            else core.connect_post_namespaced_pod_proxy_with_path
        )
        try:
            resp = fn(f"{pod}:{port}", namespace, path, _preload_content=False)
        except ApiException as e:
            body = e.body if isinstance(e.body, bytes) else str(e.body or "").encode()
            return int(e.status or 0), body
        return int(resp.status), bytes(resp.data)

    return call


def deployment_health(
    namespace: str = DEFAULT_NAMESPACE,
    selector: str = DEFAULT_SELECTOR,
    *,
    apis: KubeApis | None = None,
    triton_url: str | None = None,
    triton_http: Callable[[str], TritonHttp] | None = None,
) -> DeploymentHealth:
    """Report the health of a samserve deployment.

    Args:
        namespace: where it runs.
        selector: label selector matching its workloads, pods and Services.
        apis: the API objects to read (default: :func:`load_apis` with the current
            kubeconfig context, or the in-cluster service account).
        triton_url: ask the Triton server at this URL (e.g. ``http://127.0.0.1:8000`` after
            ``kubectl port-forward deploy/samserve-triton 8000``) instead of every Triton pod
            through the API server's pod proxy.
        triton_http: ``pod name -> TritonHttp``; overrides how Triton pods are reached.

    Returns:
        Workloads (ready vs desired replicas), pods, ready and not-ready endpoints per
        Service, Triton readiness and model states, and the list of problems (empty: healthy).

    Raises:
        kubernetes.client.exceptions.ApiException: the API server refused a listing.
    """
    if apis is None:
        apis = load_apis()
    workloads = _workloads(apis, namespace, selector)
    pods = sorted(
        (
            _pod_health(p)
            for p in apis.core.list_namespaced_pod(namespace, label_selector=selector).items
        ),
        key=lambda p: (p.component, p.name),
    )
    services = _endpoints(apis, namespace, selector)
    triton: list[TritonHealth] = []
    if triton_url:
        triton.append(triton_health(triton_url, url_http(triton_url)))
    else:
        reach = triton_http or (lambda pod: pod_proxy_http(apis.core, namespace, pod))
        for p in pods:
            # Only running pods answer; the others already show up as not ready.
            if p.component == TRITON_COMPONENT and p.phase == "Running":
                triton.append(triton_health(p.name, reach(p.name)))
    return DeploymentHealth(
        namespace=namespace,
        selector=selector,
        workloads=tuple(workloads),
        pods=tuple(pods),
        services=tuple(services),
        triton=tuple(triton),
        problems=_problems(workloads, services, triton),
    )


def load_apis(context: str | None = None, kubeconfig: str | None = None) -> Apis:
    """API objects from the in-cluster service account (inside a pod) or a kubeconfig."""
    from kubernetes import client, config

    # Untyped loaders; typed as Any so mypy passes with or without the package installed.
    loaders: Any = config
    if context is None and kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loaders.load_incluster_config()
    else:
        loaders.load_kube_config(config_file=kubeconfig, context=context)
    return Apis(client.CoreV1Api(), client.AppsV1Api(), client.DiscoveryV1Api())


def format_table(report: DeploymentHealth) -> str:
    """The report as aligned text tables, problems last."""
    state = "HEALTHY" if report.ok else "UNHEALTHY"
    lines = [f"samserve in namespace {report.namespace} ({report.selector}): {state}", ""]
    lines += table_lines(
        (
            (f"{w.kind.lower()}/{w.name}", f"{w.ready}/{w.desired}", w.available, w.updated)
            for w in report.workloads
        ),
        ("WORKLOAD", "READY", "AVAILABLE", "UP-TO-DATE"),
    )
    lines.append("")
    lines += table_lines(
        (
            (
                p.name,
                p.component,
                "yes" if p.ready else "no",
                p.phase,
                p.restarts,
                p.node or "-",
                p.reason or "",
            )
            for p in report.pods
        ),
        ("POD", "COMPONENT", "READY", "PHASE", "RESTARTS", "NODE", "WAITING"),
    )
    lines.append("")
    lines += table_lines(
        (
            (s.name, ",".join(s.ports), len(s.ready), len(s.not_ready), ",".join(s.ready) or "-")
            for s in report.services
        ),
        ("SERVICE", "PORTS", "READY", "NOT-READY", "ENDPOINTS"),
    )
    if report.triton:
        lines.append("")
        rows: list[tuple[object, ...]] = []
        for t in report.triton:
            ready = "yes" if t.ready else "no"
            if t.error or not t.models:
                rows.append((t.source, ready, "-", "-", t.error or "no models"))
            rows.extend((t.source, ready, m.name, m.version, m.state) for m in t.models)
        lines += table_lines(rows, ("TRITON", "READY", "MODEL", "VERSION", "STATE"))
    if report.problems:
        lines += ["", "problems:", *(f"  - {p}" for p in report.problems)]
    return "\n".join(lines) + "\n"


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The flags of ``samserve status`` (``SAMSERVE_K8S_*`` environment fallbacks)."""
    StatusSettings.add_cli_args(parser, env)


def run_status(
    ns: argparse.Namespace, *, apis: KubeApis | None = None, out: TextIO | None = None
) -> int:
    """``samserve status``: print the report; exit code 0 healthy, 1 unhealthy, 2 no answer.

    Args:
        ns: parsed flags (:func:`add_cli_args`).
        apis: API objects to use instead of loading a kubeconfig (tests).
        out: where the report goes (default stdout); errors go to stderr.
    """
    out = out if out is not None else sys.stdout
    try:
        if apis is None:
            apis = load_apis(ns.context, ns.kubeconfig)
        report = deployment_health(
            ns.namespace, ns.selector, apis=apis, triton_url=ns.triton_url or None
        )
    except Exception as e:  # any failure to reach or read the cluster: report, exit 2
        print(f"samserve status: cannot read the cluster: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if ns.output == "json":
        out.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        out.write(format_table(report))
    return 0 if report.ok else 1
