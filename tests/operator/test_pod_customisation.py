"""spec.cluster.pod: typed Kubernetes fields for the Ray pods, validated by the API server with core/v1's schemas.
They land on the head and worker pods next to ours (ours win), the pods still meet the restricted standard, and the
API server refuses a hostPath volume or a securityContext with messages that say why."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from pydantic import ValidationError
from textgen_operator import constants as C
from textgen_operator.pod_customisation import DEFAULTS_ENV, with_pod_defaults
from textgen_operator.spec import TextGenServiceSpec
from textgen_operator.validation import InvalidSpec, validate

from tests.operator.pss_restricted import violations
from tests.operator.tgs_common import create_tgs, effective_pods, get, load_sample
from tests.support import wait_for

POD = {
    "labels": {"team": "nlp", "app.kubernetes.io/component": "mine"},
    "annotations": {"example.com/owner": "nlp"},
    "nodeSelector": {"example.com/pool": "serving"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoSchedule"}],
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "ray-pods",
    "priorityClassName": "",
    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
    "volumes": [{"name": "model-cache", "emptyDir": {"sizeLimit": "1Gi"}}],
    "volumeMounts": [{"name": "model-cache", "mountPath": "/cache"}],
}


def customised(name: str = "custom") -> dict:
    doc = load_sample("autoscaling")
    doc["metadata"]["name"] = name
    doc["spec"].setdefault("cluster", {})["pod"] = json.loads(json.dumps(POD))
    return doc


def test_the_fields_land_on_both_pods_and_ours_win():
    pods = effective_pods(customised())
    for kind, pod in pods.items():
        assert violations(pod) == [], kind
        assert pod["tolerations"] == POD["tolerations"] and pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["serviceAccountName"] == "ray-pods" and pod["automountServiceAccountToken"] is False
        assert pod["nodeSelector"] == {"example.com/pool": "serving", C.NODE_TYPE_LABEL: "m5.4xlarge"}
        ray = pod["containers"][0]
        assert ray["env"] == POD["env"] and ray["volumeMounts"] == POD["volumeMounts"]
        assert {"name": "model-cache", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    # The autoscaler sidecar gets only its token mount, and the head keeps that volume beside the user's.
    head = pods["head"]
    assert [m["name"] for m in head["containers"][1]["volumeMounts"]] == ["autoscaler-api-access"]
    assert [v["name"] for v in head["volumes"]] == ["model-cache", "autoscaler-api-access"]


@pytest.mark.parametrize("pod, message", [
    ({"nodeSelector": {C.NODE_TYPE_LABEL: "m5.large"}}, "must not set node.kubernetes.io/instance-type"),
    ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "must name volumes of cluster.pod.volumes"),
    ({"volumes": [{"name": "shared-mem", "emptyDir": {}}]}, "must not be named shared-mem"),
    ({"securityContext": {"privileged": True}}, "Extra inputs are not permitted"),
])
def test_the_operator_refuses_what_the_api_server_refuses(pod, message):
    with pytest.raises(ValidationError) as info:
        TextGenServiceSpec.model_validate({"cluster": {"pod": pod}})
    assert message in str(info.value)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_the_api_server_validates_and_refuses(api, k8s_api, kubectl, namespace, run_operator, crd_installed):
    def dry_run(pod: dict):
        doc = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "x", "namespace": namespace},
               "spec": {"cluster": {"pod": pod}}}
        return kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)

    refusals = {
        "hostPath volumes are not allowed": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        # kubectl asks for strict field validation; a client that does not gets the field pruned, then this rule:
        'unknown field "spec.cluster.pod.volumes[0].nfs"': {"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]},
        "a volume must use exactly one of": {"volumes": [{"name": "n"}]},
        'unknown field "spec.cluster.pod.securityContext"': {"securityContext": {"runAsUser": 0}},
        'unknown field "spec.cluster.pod.hostNetwork"': {"hostNetwork": True},
        'unknown field "spec.cluster.pod.env[0].securityContext"': {"env": [{"name": "A", "securityContext": {}}]},
        "spec.cluster.pod.tolerations[0].tolerationSeconds: Invalid value": {"tolerations": [{"tolerationSeconds": "x"}]},
        "must not set node.kubernetes.io/instance-type": {"nodeSelector": {C.NODE_TYPE_LABEL: "m5.large"}},
    }
    for message, pod in refusals.items():
        proc = dry_run(pod)
        assert proc.returncode != 0 and message in proc.stderr, (message, proc.stderr)
    assert dry_run(POD).returncode == 0

    # In a restricted namespace, KubeRay creates the pods with the fields on (they stay Pending: no kubelet here).
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "ray-pods"}})
    with run_operator():
        create_tgs(api, namespace, customised())
        def head_and_worker():
            pods = core.list_namespaced_pod(namespace, label_selector="textgen.dev/service=custom").items
            return pods if {p.metadata.labels.get("ray.io/node-type") for p in pods} >= {"head", "worker"} else None

        pods = wait_for(head_and_worker, "the customised head and worker pods", timeout=180)
    for pod in pods:
        spec = k8s_api.sanitize_for_serialization(pod.spec)
        assert violations(spec) == [], pod.metadata.name
        assert spec["serviceAccountName"] == "ray-pods" and spec["tolerations"][0]["key"] == "dedicated"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in spec["containers"][0]["env"]
        assert pod.metadata.labels["team"] == "nlp" and pod.metadata.labels["app.kubernetes.io/component"] != "mine"


DEFAULTS = {"tolerations": [{"key": "ray", "operator": "Exists"}], "env": [{"name": "A", "value": "default"}],
            "labels": {"team": "all"}}


def test_chart_defaults_go_under_the_services_own_fields():
    env = {DEFAULTS_ENV: json.dumps(DEFAULTS)}
    spec = with_pod_defaults({"cluster": {"pod": {"env": [{"name": "A", "value": "mine"}], "labels": {}}}}, env)
    assert spec["cluster"]["pod"] == {**DEFAULTS, "env": [{"name": "A", "value": "mine"}]}
    assert with_pod_defaults({"replicas": 2}, {}) == {"replicas": 2}


def test_chart_defaults_cannot_bring_a_host_path(monkeypatch):
    monkeypatch.setenv(DEFAULTS_ENV, json.dumps({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}))
    with pytest.raises(InvalidSpec) as info:
        validate("x", {})
    assert "cluster.pod.volumes may only use one of" in str(info.value)


def test_the_chart_hands_pod_defaults_to_the_operator():
    from tests.chart.chart_utils import render_objects

    objs = render_objects("--set-json", f"podDefaults={json.dumps(DEFAULTS)}")
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env[DEFAULTS_ENV]) == DEFAULTS


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_operator_applies_chart_defaults(api, namespace, run_operator, monkeypatch):
    monkeypatch.setenv(DEFAULTS_ENV, json.dumps(DEFAULTS))
    doc = load_sample("fixed")
    with run_operator():
        create_tgs(api, namespace, doc)
        rs = wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, doc["metadata"]["name"]), "the RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert template["spec"]["tolerations"] == DEFAULTS["tolerations"]
        assert template["spec"]["containers"][0]["env"][0] == {"name": "A", "value": "default"}
        assert template["metadata"]["labels"]["team"] == "all"
