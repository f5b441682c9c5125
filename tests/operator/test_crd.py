"""The generated CRD: committed copies match the pydantic models; structure, rules and samples check out."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml
from textgen_operator import constants as C
from textgen_operator import crd
from textgen_operator.crd import volume_rules
from textgen_operator.spec import ROOT_RULES, Autoscaling, Cluster, PodCustomisation, Serving, TextGenServiceSpec

from tests.operator.tgs_common import ROOT, SAMPLES

COMMITTED = [ROOT / "manifests" / "crd" / C.CRD_FILENAME, ROOT / "charts" / "textgen-operator" / "crds" / C.CRD_FILENAME]


@pytest.mark.parametrize("path", COMMITTED, ids=["manifests", "chart"])
def test_committed_crd_matches_the_model(path):
    assert path.exists(), f"{path} is missing: run `make manifests`"
    assert path.read_text() == crd.render(), f"{path} drifted from operator/textgen_operator/spec.py: run `make manifests`"


def _crd_version():
    doc = yaml.safe_load(crd.render())
    assert doc["kind"] == "CustomResourceDefinition"
    (version,) = doc["spec"]["versions"]
    return doc, version


def test_names_scope_and_subresources():
    doc, v = _crd_version()
    assert doc["metadata"]["name"] == "textgenservices.textgen.dev"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TextGenService", "textgenservices", ["tgs"])
    assert doc["spec"]["scope"] == "Namespaced"
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                  "labelSelectorPath": ".status.selector"},
    }
    cols = {c["name"]: c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert cols["Replicas"] == ".spec.replicas"
    assert cols["Min"] == ".spec.autoscaling.minReplicas" and cols["Max"] == ".spec.autoscaling.maxReplicas"
    assert cols["Ready"] == ".status.readyReplicas" and cols["Age"] == ".metadata.creationTimestamp"


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    _, v = _crd_version()
    schema = v["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if not isinstance(node, dict) or path.endswith(".properties") or ".default" in path:
            continue
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & set(node), path
        if "additionalProperties" in node:  # a map: a schema for its values, no fixed properties
            assert isinstance(node["additionalProperties"], dict) and "properties" not in node, path
        if "x-kubernetes-validations" not in path and "properties" not in path.rsplit(".", 1)[-1]:
            assert "type" in node or path.endswith("metadata") or "x-kubernetes-validations" in path \
                or node.get("x-kubernetes-int-or-string") is True, path


def test_spec_and_status_fields():
    _, v = _crd_version()
    props = v["schema"]["openAPIV3Schema"]["properties"]
    spec = props["spec"]["properties"]
    assert spec["replicas"]["type"] == "integer" and spec["replicas"]["minimum"] == 1
    auto = spec["autoscaling"]["properties"]
    for field in ("enabled", "minReplicas", "maxReplicas", "targetOngoingRequests", "upscaleDelayS", "downscaleDelayS"):
        assert field in auto
    assert auto["targetOngoingRequests"]["exclusiveMinimum"] is True
    cluster = spec["cluster"]["properties"]
    assert cluster["nodeType"]["default"] == "m5.4xlarge"
    assert cluster["nodeType"]["enum"] == list(C.NODE_TYPES)
    assert cluster["image"]["default"] == C.DEFAULT_IMAGE == "textgen-serve:0.1.0"
    assert cluster["rayVersion"]["default"] == C.RAY_VERSION == "2.60.0"
    assert spec["serving"]["properties"]["dtype"]["enum"] == ["float32", "bfloat16", "int8", "auto"]
    # an absent nested object defaults to all its fields' defaults; autoscaling's switch and bounds have none, since
    # bounds set without `enabled` turn autoscaling on (spec.Autoscaling)
    assert spec["autoscaling"]["default"] == {
        "targetOngoingRequests": 2.0, "upscaleDelayS": 30.0, "downscaleDelayS": 600.0, "lookBackPeriodS": 30.0,
        "nodeIdleTimeoutS": 60}
    assert not {"default"} & (set(auto["enabled"]) | set(auto["minReplicas"]) | set(auto["maxReplicas"]))
    assert spec["cluster"]["default"]["head"] == {} and spec["cluster"]["properties"]["worker"]["default"] == {}
    assert "&id" not in crd.render()
    status = props["status"]["properties"]
    assert set(status) >= {"conditions", "observedGeneration", "replicas", "readyReplicas", "selector", "url",
                           "rayServiceName"}
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def _rules_in(schema):
    return [r for _, node in _walk(schema) if isinstance(node, dict)
            for r in node.get("x-kubernetes-validations", [])]


def test_every_rule_is_in_the_crd_with_its_message():
    _, v = _crd_version()
    in_crd = {(r["rule"], r["message"]) for r in _rules_in(v["schema"]["openAPIV3Schema"])}
    declared = {(r.cel, r.message) for m in (TextGenServiceSpec, Autoscaling, Serving, Cluster, PodCustomisation)
                for r in m.rules}
    declared |= {(r.cel, r.message) for r in ROOT_RULES}
    declared |= {(r["rule"], r["message"]) for r in volume_rules()}
    assert declared and declared == in_crd
    assert ("(has(self.minReplicas) ? self.minReplicas : 1) <= (has(self.maxReplicas) ? self.maxReplicas : 4)",
            "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas") in in_crd


def test_rule_fields_exist_in_the_schema():
    """Every `self.a.b` a CEL rule reads is a property of the object the rule sits on."""
    _, v = _crd_version()
    root = v["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        if not isinstance(node, dict) or "x-kubernetes-validations" not in node:
            continue
        for rule in node["x-kubernetes-validations"]:
            for ref, call in re.findall(r"self((?:\.[A-Za-z]+)+)(\(?)", rule["rule"]):
                parts = ref.strip(".").split(".")
                cursor = node
                for part in parts[:-1] if call else parts:  # self.volumes.all(...): `all` is a CEL macro
                    if cursor is root and part == "metadata":
                        break
                    assert part in cursor.get("properties", {}), f"{rule['rule']}: {part} not under {path}"
                    cursor = cursor["properties"][part]


def _openapi_validator():
    _, v = _crd_version()
    # OpenAPI v3.0 schemas use draft-4 semantics (boolean exclusiveMinimum); x-kubernetes-* keys are ignored.
    return jsonschema.Draft4Validator(v["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_samples_validate_against_the_crd_schema(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == C.API_VERSION and doc["kind"] == C.KIND
    _openapi_validator().validate(doc)


def test_schema_rejects_out_of_range_values():
    validator = _openapi_validator()
    bad = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "x"},
           "spec": {"replicas": 0, "serving": {"dtype": "float16"}, "cluster": {"nodeType": "t2.micro"}}}
    errors = {e.json_path for e in validator.iter_errors(bad)}
    assert errors == {"$.spec.replicas", "$.spec.serving.dtype", "$.spec.cluster.nodeType"}
