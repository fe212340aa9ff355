"""Every overlay renders with ``kubectl kustomize`` and every object is valid.

Core Kubernetes objects are validated strictly (unknown fields rejected) against the
Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships, for the oldest and the newest
Kubernetes the manifests target. CRD objects (KEDA ScaledObject, Prometheus Operator
PodMonitor and PrometheusRule) have no schema there: they are checked structurally against the
small JSON schemas in ``schemas/`` (required fields, types, no unknown fields in the parts we
use), and the HPA behaviour inside each ScaledObject against the real HPA schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    K8S_VERSIONS,
    NAMESPACE,
    OVERLAYS,
    WORKLOAD_KINDS,
    by_kind,
    containers,
    find,
    render,
)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate"
)
jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")

CRD_SCHEMAS = {
    "ScaledObject": "scaledobject.json",
    "PodMonitor": "podmonitor.json",
    "PrometheusRule": "prometheusrule.json",
}
#: Objects that the operator creates, not the manifests (docs/deploy.md, "before you apply").
EXTERNAL = {
    "prod": {("Secret", "samserve-redis"), ("PersistentVolumeClaim", "sam-checkpoints")},
    "dev": set(),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_expected_objects(overlay):
    docs = render(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", NAMESPACE),
        ("Deployment", "samserve-embedding"),
        ("Deployment", "samserve-decoder"),
        ("Deployment", "samserve-triton"),
        ("StatefulSet", "samserve-redis"),
        ("Service", "samserve-embedding"),
        ("Service", "samserve-decoder"),
        ("Service", "samserve-triton"),
        ("Service", "samserve-redis"),
        ("NetworkPolicy", "default-deny"),
    ]:
        assert expected in names, f"{overlay}: {expected} missing"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "samserve", (
            f"{d['kind']}/{d['metadata']['name']} lacks the part-of label samserve status uses"
        )
    if overlay == "prod":
        assert {"ScaledObject", "PodDisruptionBudget", "PodMonitor", "PrometheusRule"} <= {
            d["kind"] for d in docs
        }
    else:
        assert not by_kind(docs, "ScaledObject", "PodDisruptionBudget")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_valid_against_kubernetes_schema(overlay):
    errors = []
    checked = 0
    for d in render(overlay):
        if d["kind"] in CRD_SCHEMAS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                errors.append(
                    f"{d['kind']}/{d['metadata']['name']} (k8s {version}): {e.message} "
                    f"at {'/'.join(map(str, e.path))}"
                )
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{d['kind']} ({d['apiVersion']}) has no schema in {version}")
    assert not errors, "\n".join(errors)
    assert checked > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_objects_structurally_valid(overlay):
    here = Path(__file__).parent / "schemas"
    schemas = {k: json.loads((here / v).read_text()) for k, v in CRD_SCHEMAS.items()}
    errors = []
    for d in render(overlay):
        schema = schemas.get(d["kind"])
        if schema is None:
            continue
        validator = jsonschema.Draft202012Validator(schema)
        errors += [
            f"{d['kind']}/{d['metadata']['name']}: {e.message} at {'/'.join(map(str, e.path))}"
            for e in validator.iter_errors(d)
        ]
    assert not errors, "\n".join(errors)


def test_crd_schemas_reject_mistakes():
    """The structural schemas catch the typical slips: a typo'd key, a numeric threshold."""
    so = find(render("prod"), "ScaledObject", "samserve-decoder")
    schema = json.loads((Path(__file__).parent / "schemas" / "scaledobject.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(so))
    typo = json.loads(json.dumps(so))
    typo["spec"]["minReplicas"] = 1
    assert list(validator.iter_errors(typo))
    numeric = json.loads(json.dumps(so))
    numeric["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    assert list(validator.iter_errors(numeric))


def test_scaledobject_hpa_behavior_valid():
    """KEDA copies advanced.horizontalPodAutoscalerConfig.behavior into an autoscaling/v2 HPA."""
    for so in by_kind(render("prod"), "ScaledObject"):
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, so["metadata"]["name"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": so["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "minReplicas": so["spec"]["minReplicaCount"],
                "maxReplicas": so["spec"]["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    """Secrets, ConfigMaps, PVCs and ServiceAccounts that pods use exist (or are documented)."""
    docs = render(overlay)
    have = {(d["kind"], d["metadata"]["name"]) for d in docs} | EXTERNAL[overlay]
    missing = set()
    for c in containers(docs):
        for src in c.spec.get("envFrom", []):
            if "configMapRef" in src:
                missing.add(("ConfigMap", src["configMapRef"]["name"]))
            if "secretRef" in src:
                missing.add(("Secret", src["secretRef"]["name"]))
        for env in c.spec.get("env", []):
            ref = env.get("valueFrom", {})
            if "secretKeyRef" in ref:
                missing.add(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                missing.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    for w in by_kind(docs, *WORKLOAD_KINDS):
        pod = w["spec"]["template"]["spec"]
        missing.add(("ServiceAccount", pod.get("serviceAccountName", "default")))
        for v in pod.get("volumes", []):
            if "configMap" in v:
                missing.add(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                missing.add(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                missing.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
    assert not (missing - have), f"{overlay}: referenced but not defined: {missing - have}"
    for so in by_kind(docs, "ScaledObject"):
        assert ("Deployment", so["spec"]["scaleTargetRef"]["name"]) in have


def test_overlays_choose_model_and_hardware():
    dev, prod = render("dev"), render("prod")
    dev_cfg = find(dev, "ConfigMap", "samserve-config")["data"]
    prod_cfg = find(prod, "ConfigMap", "samserve-config")["data"]
    assert dev_cfg["SAMSERVE_MODEL"] == "tiny"
    assert dev_cfg["SAMSERVE_TRITON_MODEL"] == "sam_image_encoder_tiny"
    assert "SAMSERVE_CHECKPOINT" not in dev_cfg  # tiny's shipped weights, no volume
    assert prod_cfg["SAMSERVE_MODEL"] == "vit_h"
    assert prod_cfg["SAMSERVE_TRITON_MODEL"] == "sam_image_encoder_vit_h"
    # The checkpoint the services load is the one Triton's vit_h config names.
    config = Path(__file__).resolve().parents[2] / "triton_models" / "sam_image_encoder_vit_h"
    assert prod_cfg["SAMSERVE_CHECKPOINT"] in (config / "config.pbtxt").read_text()
    for docs, gpu in ((dev, False), (prod, True)):
        for c in containers(docs):
            limits = c.spec["resources"].get("limits", {})
            expect = gpu and c.spec["name"] == "triton"
            assert ("nvidia.com/gpu" in limits) == expect, c.where
