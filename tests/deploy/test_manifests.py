"""Every overlay, and prod with each component, renders with ``kubectl kustomize`` and every
object is valid.

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
    CLUSTER_SCOPED,
    DEPLOY,
    K8S_VERSIONS,
    NAMESPACE,
    ROOT,
    VARIANTS,
    WORKLOAD_KINDS,
    by_kind,
    config,
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
    "Certificate": "certificate.json",
    "Issuer": "issuer.json",
}
#: Objects that the operator creates, not the manifests (docs/deploy.md, "before you apply"):
#: the Redis password, the checkpoint source URL (fill Job), and the checkpoint volume where
#: no checkpoints component defines it.
EXTERNAL_PROD = {
    ("Secret", "samserve-redis"),
    ("Secret", "samserve-redis-acl"),
    ("Secret", "samserve-auth-tokens"),
    ("Secret", "samserve-checkpoint-source"),
    ("Secret", "samserve-redis-external-ca"),
    ("PersistentVolumeClaim", "sam-checkpoints"),
}


def external(variant: str) -> set[tuple[str, str]]:
    return set() if variant == "dev" else EXTERNAL_PROD


@pytest.mark.parametrize("overlay", VARIANTS)
def test_renders_expected_objects(overlay):
    docs = render(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", NAMESPACE),
        ("Deployment", "samserve-embedding"),
        ("Deployment", "samserve-decoder"),
        ("Deployment", "samserve-triton"),
        ("Service", "samserve-embedding"),
        ("Service", "samserve-decoder"),
        ("Service", "samserve-triton"),
        ("NetworkPolicy", "default-deny"),
        # The in-cluster Redis, unless the deployment uses an external one.
        *(
            [("StatefulSet", "samserve-redis"), ("Service", "samserve-redis")]
            if "redis-external" not in overlay
            else []
        ),
    ]:
        assert expected in names, f"{overlay}: {expected} missing"
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "samserve", (
            f"{d['kind']}/{d['metadata']['name']} lacks the part-of label samserve status uses"
        )
    if overlay != "dev":
        kinds = {d["kind"] for d in docs}
        assert {"ScaledObject", "PodDisruptionBudget", "PodMonitor", "PrometheusRule"} <= kinds
        assert {"Issuer", "Certificate"} <= kinds
    else:
        assert not by_kind(docs, "ScaledObject", "PodDisruptionBudget")
    # Components' parameter files (config.kubernetes.io/local-config) never reach a cluster.
    for d in docs:
        annotations = d["metadata"].get("annotations", {})
        assert "config.kubernetes.io/local-config" not in annotations, d["metadata"]["name"]


@pytest.mark.parametrize("overlay", VARIANTS)
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


@pytest.mark.parametrize("overlay", VARIANTS)
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


def test_certificate_schemas_reject_mistakes():
    here = Path(__file__).parent / "schemas"
    cert = find(render("prod"), "Certificate", "samserve-embedding-tls")
    validator = jsonschema.Draft202012Validator(json.loads((here / "certificate.json").read_text()))
    assert not list(validator.iter_errors(cert))
    for mutate in (
        lambda c: c["spec"].pop("issuerRef"),
        lambda c: c["spec"].update(duration="90d"),
        lambda c: c["spec"].update(usages=["server"]),
        lambda c: c["spec"].update(dnsName=["x"]),
    ):
        bad = json.loads(json.dumps(cert))
        mutate(bad)
        assert list(validator.iter_errors(bad)), bad["spec"]


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


@pytest.mark.parametrize("overlay", VARIANTS)
def test_references_resolve(overlay):
    """Secrets, ConfigMaps, PVCs and ServiceAccounts that pods use exist (or are documented)."""
    docs = render(overlay)
    have = {(d["kind"], d["metadata"]["name"]) for d in docs} | external(overlay)
    # cert-manager writes each Certificate's Secret; an Issuer's CA Secret is one of them.
    have |= {("Secret", c["spec"]["secretName"]) for c in by_kind(docs, "Certificate")}
    for issuer in by_kind(docs, "Issuer"):
        if "ca" in issuer["spec"]:
            assert ("Secret", issuer["spec"]["ca"]["secretName"]) in have
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
    dev_model, prod_model = config(dev, "samserve-model"), config(prod, "samserve-model")
    assert dev_model["SAMSERVE_MODEL"] == "tiny"
    assert "SAMSERVE_CHECKPOINT" not in dev_model  # tiny's shipped weights, no volume
    assert prod_model["SAMSERVE_MODEL"] == "vit_h"
    assert prod_model["SAMSERVE_CHECKPOINT"] == "/checkpoints/sam_vit_h_4b8939.pth"
    # Triton computes vit_h in bf16: the model id says so (issue 12).
    assert prod_model["SAMSERVE_ENCODER_DTYPE"] == "bfloat16"
    for docs, gpu in ((dev, False), (prod, True)):
        for c in containers(docs):
            limits = c.spec["resources"].get("limits", {})
            expect = gpu and c.spec["name"] == "triton"
            assert ("nvidia.com/gpu" in limits) == expect, c.where


def test_one_component_moves_prod_to_sam2():
    """components/model/sam2.1-hiera-l changes the model's ConfigMap and nothing else, and the
    Triton model its init container will copy exists for that variant, on GPU in bfloat16."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from samserve.core.variants import family_of, triton_model_name

    prod, sam2 = render("prod"), render("prod+model/sam2.1-hiera-l")
    model = config(sam2, "samserve-model")
    assert model["SAMSERVE_MODEL"] == "sam2.1_hiera_l" and family_of("sam2.1_hiera_l") == "sam2"
    assert model["SAMSERVE_CHECKPOINT"] == "/checkpoints/sam2.1_hiera_large.pt"
    assert model["SAMSERVE_EXPECT_MODEL_ID"].startswith("sam2.1_hiera_l-")

    def without_model(docs):
        old = f"samserve-model-{config_suffix(docs, 'samserve-model')}"
        text = json.dumps([d for d in docs if d["metadata"]["name"] != old], sort_keys=True)
        return text.replace(old, "samserve-model")

    assert without_model(sam2) == without_model(prod)
    name = triton_model_name(model["SAMSERVE_MODEL"])
    path = ROOT / "triton_models" / name / "config.pbtxt"
    cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert cfg.name == name
    assert (params["variant"], params["device"], params["dtype"]) == (
        "sam2.1_hiera_l",
        "cuda",
        "bfloat16",
    )
    assert params["checkpoint"] == model["SAMSERVE_CHECKPOINT"]
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


@pytest.mark.parametrize("overlay", VARIANTS)
def test_model_identity_has_one_source(overlay):
    """The variant, checkpoint path and model id live in samserve-model alone.

    Every pod that runs the model reads them from there (envFrom), nothing sets them
    elsewhere, and Triton's model name and checkpoint follow from them (its init container
    copies sam_image_encoder_<variant> and writes SAMSERVE_CHECKPOINT into its config).
    """
    docs = render(overlay)
    keys = {"SAMSERVE_MODEL", "SAMSERVE_CHECKPOINT", "SAMSERVE_EXPECT_MODEL_ID",
            "SAMSERVE_ENCODER_DTYPE"}  # fmt: skip
    model = config(docs, "samserve-model")
    assert set(model) <= keys and {"SAMSERVE_MODEL", "SAMSERVE_EXPECT_MODEL_ID"} <= set(model)
    # The id names the variant it was computed for.
    variant, _, digest = model["SAMSERVE_EXPECT_MODEL_ID"].rpartition("-")
    assert variant == model["SAMSERVE_MODEL"] and len(digest) == 16, model
    int(digest, 16)
    assert not keys & set(config(docs, "samserve-config"))
    # Triton's model name follows the variant (the services' default), never set twice.
    assert "SAMSERVE_TRITON_MODEL" not in config(docs, "samserve-config")
    model_cm = f"samserve-model-{config_suffix(docs, 'samserve-model')}"
    for c in containers(docs):
        if c.spec["name"] in ("embedding", "decoder", "model-repository", "fill"):
            refs = [s["configMapRef"]["name"] for s in c.spec.get("envFrom", [])]
            assert model_cm in refs, c.where
        for env in c.spec.get("env", []):
            assert env["name"] not in keys, f"{c.where} sets {env['name']} itself"


def config_suffix(docs, name: str) -> str:
    from tests.deploy.manifests import generated

    return generated(docs, "ConfigMap", name)["metadata"]["name"].rsplit("-", 1)[1]


def test_dev_model_id_is_the_shipped_weights():
    """dev runs tiny's shipped weights: its expected id is theirs (a retrained tiny moves it)."""
    from samserve.core.models import load_model

    model = config(render("dev"), "samserve-model")
    assert model["SAMSERVE_EXPECT_MODEL_ID"] == load_model("tiny").model_id
    assert (DEPLOY / "base" / "model.env").read_text().count(model["SAMSERVE_EXPECT_MODEL_ID"])
