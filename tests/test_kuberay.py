"""deploy/kuberay/ is what KubeRay accepts: every manifest, with its `${VAR}` placeholders filled in as `envsubst`
would, validates against the CRD schema of the pinned KubeRay release (deploy/kuberay/crds/, from the operator's Helm
chart) made strict the way `kubectl apply --validate=strict` is (an unknown field is an error), and says what the
cluster needs: autoscaling on, a head without CPUs or GPUs for work, GPU worker groups asking for nvidia.com/gpu
from zero, one RayJob per common run on that cluster."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
EXAMPLE = {"SAS_RAY_IMAGE": "123456789012.dkr.ecr.us-west-2.amazonaws.com/sas-ray:0.1.0",
           "SAS_RAY_EXTRACT_CONFIG": "s3://bucket/configs/extract.yaml",
           "SAS_RAY_DISTILL_CONFIG": "s3://bucket/configs/distill.yaml"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def strict(schema: dict) -> dict:
    """The CRD's structural schema with unknown fields refused wherever it lists the fields (Kubernetes' strict field
    validation), except where it keeps unknown fields on purpose (x-kubernetes-preserve-unknown-fields)."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def validator(kind: str) -> jsonschema.Draft7Validator:
    crd = json.loads((KUBERAY / "crds" / f"{kind.lower()}-v1.schema.json").read_text())
    assert crd["source"]["tag"] == "v1.7.0" and crd["source"]["version"] == "v1"
    return jsonschema.Draft7Validator(strict(crd["schema"]))


def manifest(name: str) -> dict:
    text = (KUBERAY / name).read_text()
    names = set(re.findall(r"\$\{(\w+)\}", text))
    assert names <= set(EXAMPLE), f"{name}: undocumented placeholders {names - set(EXAMPLE)}"
    return yaml.safe_load(re.sub(r"\$\{(\w+)\}", lambda m: EXAMPLE[m[1]], text))


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_every_manifest_validates_against_the_pinned_kuberay_crds():
    files = sorted(p.name for p in KUBERAY.glob("*.yaml"))
    assert files == ["raycluster.yaml", "rayjob-distill.yaml", "rayjob-extract.yaml"]
    for name in files:
        doc = manifest(name)
        assert doc["apiVersion"] == "ray.io/v1" and DNS_LABEL.fullmatch(doc["metadata"]["name"]), name
        validator(doc["kind"]).validate(doc)


def test_the_cluster_autoscales_gpu_groups_from_zero_around_a_head_that_takes_no_work():
    cluster = manifest("raycluster.yaml")["spec"]
    pins = dict(line.split("==") for line in (ROOT / "constraints-cpu.txt").read_text().splitlines() if "==" in line)
    assert cluster["enableInTreeAutoscaling"] is True and cluster["rayVersion"] == pins["ray"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in containers(head["template"]))
    gpus = {}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"], group["groupName"]
        (worker,) = containers(group["template"])
        assert worker["resources"]["requests"] == worker["resources"]["limits"], group["groupName"]  # Guaranteed QoS
        gpus[group["groupName"]] = int(worker["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert gpus == {"gpu1": 1, "gpu4": 4, "cpu": 0}
    images = {c["image"] for g in [head, *cluster["workerGroupSpecs"]] for c in containers(g["template"])}
    assert images == {EXAMPLE["SAS_RAY_IMAGE"]}


def test_one_rayjob_per_common_run_on_that_cluster():
    cluster = manifest("raycluster.yaml")["metadata"]["name"]
    for stage in ("extract", "distill"):
        job = manifest(f"rayjob-{stage}.yaml")["spec"]
        assert job["clusterSelector"] == {"ray.io/cluster": cluster}
        assert job["entrypoint"] == f"sas-ray {stage} --config {EXAMPLE[f'SAS_RAY_{stage.upper()}_CONFIG']}"


@pytest.mark.parametrize("breakage, message", [
    (lambda doc: doc["spec"].update(enableInTreeAutoScaling=True), "enableInTreeAutoScaling"),
    (lambda doc: doc["spec"]["workerGroupSpecs"][0].update(minReplicas="0"), "'0' is not of type 'integer'"),
    (lambda doc: doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"),
     "'name' is a required property"),
], ids=["misspelt-field", "wrong-type", "missing-required-field"])
def test_the_schema_refuses_a_broken_cluster(breakage, message):
    doc = manifest("raycluster.yaml")
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validator("RayCluster").validate(doc)
