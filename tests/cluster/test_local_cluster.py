"""The local control plane is real Kubernetes with the real KubeRay operator (hack/cluster; `make cluster-up`).

These run against whatever the `kubeconfig` fixture provides: the local cluster, or the user's own cluster with
TEXTGEN_USE_EXISTING_CLUSTER=1 and KUBECONFIG set (KubeRay must be installed there).
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s_fixtures import KUBERAY_SAMPLES, use_existing_cluster
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.cluster

RAY_GROUP, RAY_VERSION = "ray.io", "v1"



def sample_rayservice() -> dict:
    path = KUBERAY_SAMPLES / "ray-service.sample.yaml"
    if not path.exists():
        pytest.fail(f"{path} missing: run `make cluster-build` (it copies KubeRay's samples out of its Go module)")
    return yaml.safe_load(path.read_text())


def test_kubectl_version_reports_the_stamped_server_version(kubectl):
    info = json.loads(kubectl("version", "-o", "json").stdout)
    server = info["serverVersion"]
    assert re.fullmatch(r"v1\.3\d\.\d+", server["gitVersion"]), server
    assert server["major"] == "1" and server["minor"] == server["gitVersion"].split(".")[1], server
    if not use_existing_cluster():
        # The version hack/cluster/kube/go.mod pins, stamped through k8s.io/component-base/version.
        pinned = (ROOT / ".cache" / "kuberay" / "kube-version").read_text().strip()
        assert server["gitVersion"] == pinned
        assert server["gitTreeState"] == "clean"


def test_kuberay_sample_rayservice_creates_raycluster_and_pods(kubectl, k8s_api, namespace):
    sample = sample_rayservice()
    name = sample["metadata"]["name"]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(sample))

    custom = client.CustomObjectsApi(k8s_api)

    def owned_raycluster():
        items = custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayclusters")["items"]
        for rc in items:
            owners = rc["metadata"].get("ownerReferences", [])
            if any(o["kind"] == "RayService" and o["name"] == name for o in owners):
                return rc
        return None

    raycluster = wait_for(owned_raycluster, timeout=120, what=f"KubeRay to create a RayCluster for RayService {name}")
    rc_name = raycluster["metadata"]["name"]
    assert rc_name.startswith(name)
    # The RayCluster carries the sample's cluster spec.
    assert raycluster["spec"]["rayVersion"] == sample["spec"]["rayClusterConfig"]["rayVersion"]

    core = client.CoreV1Api(k8s_api)

    def head_and_worker_pods():
        pods = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={rc_name}").items
        kinds = {p.metadata.labels.get("ray.io/node-type") for p in pods}
        return pods if {"head", "worker"} <= kinds else None

    pods = wait_for(head_and_worker_pods, timeout=120, what=f"head and worker Pods of RayCluster {rc_name}")
    head = [p for p in pods if p.metadata.labels["ray.io/node-type"] == "head"]
    workers = [p for p in pods if p.metadata.labels["ray.io/node-type"] == "worker"]
    assert len(head) == 1
    assert len(workers) == sample["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"]
    assert head[0].spec.containers[0].image == "rayproject/ray:2.46.0"
    assert all(o.kind == "RayCluster" and o.name == rc_name for p in pods for o in p.metadata.owner_references)

    # And kubectl shows it, through the CRD's printer columns.
    out = kubectl("get", "rayclusters", "-n", namespace).stdout
    assert rc_name in out and "DESIRED WORKERS" in out
    assert name in kubectl("get", "rayservices", "-n", namespace).stdout


def test_rayservice_with_a_wrong_field_type_is_rejected_by_the_api_server(k8s_api, namespace):
    custom = client.CustomObjectsApi(k8s_api)
    good = sample_rayservice()
    good["metadata"]["name"] = "typed"

    bad = copy.deepcopy(good)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "three"  # an integer in the schema
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayservices", bad)
    assert err.value.status == 422, err.value.body
    assert "replicas" in err.value.body and "integer" in err.value.body, err.value.body
    assert custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayservices")["items"] == []

    bad2 = copy.deepcopy(good)
    bad2["spec"]["serveConfigV2"] = {"applications": []}  # a YAML *string* in the schema
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayservices", bad2)
    assert err.value.status == 422 and "serveConfigV2" in err.value.body, err.value.body

    # The same object with the right types is accepted: the rejection was the schema, nothing else.
    created = custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, "rayservices", good)
    assert created["metadata"]["uid"]


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]))
    )
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone():
        try:
            core.read_namespaced_config_map("dependent", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(dependent_gone, timeout=60, what="the garbage collector to delete the dependent ConfigMap")
    # Objects without that owner are untouched.
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def test_namespace_deletion_is_finalized(k8s_api):
    core = client.CoreV1Api(k8s_api)
    name = f"t-del-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    core.delete_namespace(name)

    def namespace_gone():
        try:
            core.read_namespace(name)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(namespace_gone, timeout=90, what=f"namespace {name} to be finalized by the namespace controller")


def test_cel_rules_server_side_apply_and_scale_subresource_work(k8s_api, kubectl, namespace):
    """What a current API server brings and an old one lacks, on a throwaway CRD of this test's own."""
    ext = client.ApiextensionsV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:8]
    group, plural, kind = "cluster-test.textgen.dev", f"widgets{suffix}", f"Widget{suffix}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer"},
                    "maxReplicas": {"type": "integer"},
                },
                "x-kubernetes-validations": [
                    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
                ],
            },
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:
        kubectl("wait", "--for", "condition=established", "--timeout=60s", f"crd/{plural}.{group}")
        custom = client.CustomObjectsApi(k8s_api)

        def widget(name, lo, hi):
            return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": name},
                    "spec": {"replicas": 1, "minReplicas": lo, "maxReplicas": hi}}

        # CEL rule (x-kubernetes-validations) enforced by the API server.
        def create_when_served(body):
            deadline = time.monotonic() + 30
            while True:
                try:
                    return custom.create_namespaced_custom_object(group, "v1", namespace, plural, body)
                except ApiException as exc:
                    if exc.status != 404 or time.monotonic() > deadline:  # 404 until discovery has the CRD
                        raise
                    time.sleep(0.5)

        with pytest.raises(ApiException) as err:
            create_when_served(widget("bad", 5, 2))
        assert err.value.status == 422 and "minReplicas must not exceed maxReplicas" in err.value.body

        # Server-side apply records the field manager.
        kubectl("apply", "--server-side", "--field-manager=textgen-test", "-n", namespace, "-f", "-",
                input=json.dumps(widget("good", 1, 3)))
        obj = custom.get_namespaced_custom_object(group, "v1", namespace, plural, "good")
        assert any(m["manager"] == "textgen-test" and m["operation"] == "Apply"
                   for m in obj["metadata"]["managedFields"])

        # The scale subresource reads and writes spec.replicas.
        kubectl("scale", f"{plural}.{group}/good", "--replicas=4", "-n", namespace)
        scale = custom.get_namespaced_custom_object_scale(group, "v1", namespace, plural, "good")
        assert scale["spec"]["replicas"] == 4
        assert custom.get_namespaced_custom_object(group, "v1", namespace, plural, "good")["spec"]["replicas"] == 4
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")
