"""Drift repair that cannot be lost, on the real local control plane with the real KubeRay operator: a re-create that
is denied is retried, a foreign RayService is never taken over, a hand-added sidecar causes no apply loop.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from textgen_operator import constants as C
from textgen_operator import handlers
from textgen_operator.builder import build_rayservice

from tests.operator.tgs_common import create_tgs, get, get_tgs, load_sample
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]


def rayservice(api, namespace, name):
    return get(api, namespace, C.RAYSERVICE_PLURAL, name)


def condition(api, namespace, name, type_):
    status = (get_tgs(api, namespace, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def deny_policy(namespace: str) -> list[dict]:
    """A ValidatingAdmissionPolicy (and its binding) that denies creating RayServices in `namespace`."""
    name = f"deny-rayservice-create-{namespace}"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["ray.io"], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["rayservices"]}]},
                  "validations": [{"expression": "false", "message": "test: RayService creation denied"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {
                      "matchLabels": {"kubernetes.io/metadata.name": namespace}}}}},
    ]


def test_deleted_rayservice_comes_back_even_when_the_first_recreate_is_denied(api, kubectl, namespace,
                                                                               run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    policy = yaml.safe_dump_all(deny_policy(namespace))
    probe = build_rayservice("probe", namespace, doc["spec"])

    def denied() -> bool:
        try:
            api.create_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, probe,
                                                dry_run="All")
        except ApiException as exc:
            return "creation denied" in exc.body
        return False

    with run_operator() as log:
        create_tgs(api, namespace, doc)
        old = wait_for(lambda: rayservice(api, namespace, name), "the RayService")
        try:
            kubectl("apply", "-f", "-", input=policy)
            wait_for(denied, "the admission policy to deny RayService creation")
            api.delete_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name)
            wait_for(lambda: log.count("creation denied") >= 2, "the operator's re-create to be denied twice (the "
                     "event handler's and a repair round's)", timeout=90)
            assert rayservice(api, namespace, name) is None
        finally:
            kubectl("delete", "--ignore-not-found", "-f", "-", input=policy)
        back = wait_for(lambda: (r := rayservice(api, namespace, name)) and r["metadata"]["uid"] !=
                        old["metadata"]["uid"] and r, "the RayService to be re-created once allowed", timeout=60)
        assert back["spec"]["serveConfigV2"] == old["spec"]["serveConfigV2"]
        assert back["metadata"]["ownerReferences"][0]["uid"] == get_tgs(api, namespace, name)["metadata"]["uid"]


def test_a_foreign_rayservice_is_left_untouched_and_reported(api, k8s_api, namespace, run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    foreign = build_rayservice(name, namespace, {"replicas": 2})  # another team's, same name, no owner reference
    foreign["metadata"]["labels"] = {"team": "search"}
    foreign["metadata"].pop("annotations", None)
    before = api.create_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, foreign)
    with run_operator():
        create_tgs(api, namespace, doc)
        degraded = wait_for(lambda: ((c := condition(api, namespace, name, "Degraded")) or {}).get("reason") ==
                            "RayServiceConflict" and c, "Degraded/RayServiceConflict")
        assert degraded["status"] == "True" and "leaves it untouched" in degraded["message"]
        assert condition(api, namespace, name, "Ready")["status"] == "False"
        events = wait_for(lambda: [e for e in client.CoreV1Api(k8s_api).list_namespaced_event(namespace).items
                                   if e.reason == "RayServiceConflict" and e.involved_object.kind == C.KIND],
                          "a RayServiceConflict event")
        assert events[0].type == "Warning"
        # at least one repair round (15 s) passes over it, and it is still as its owner left it
        time.sleep(handlers.REPAIR_INTERVAL_S + 5)
        now = rayservice(api, namespace, name)
        assert now["metadata"]["generation"] == before["metadata"]["generation"]
        assert now["spec"]["serveConfigV2"] == foreign["spec"]["serveConfigV2"]
        assert not now["metadata"].get("ownerReferences") and now["metadata"]["labels"] == {"team": "search"}
        assert len([e for e in client.CoreV1Api(k8s_api).list_namespaced_event(namespace).items
                    if e.reason == "RayServiceConflict"]) == 1  # one Event per conflict, not one per round
        # deleting the TextGenService must not take the other team's RayService with it
        api.delete_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, name)
        wait_for(lambda: get_tgs(api, namespace, name) is None, "the TextGenService to go")
    assert rayservice(api, namespace, name)["metadata"]["uid"] == before["metadata"]["uid"]


def test_a_hand_added_sidecar_causes_no_apply_loop(api, kubectl, namespace, run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    with run_operator() as log:
        create_tgs(api, namespace, doc)
        wait_for(lambda: rayservice(api, namespace, name), "the RayService")
        wait_for(lambda: log.count("Handler 'reconcile' succeeded"), "the create handler to finish")
        applied = log.count("Applied RayService")
        sidecar = {"name": "log-shipper", "image": "fluent-bit:3.2"}
        patch = [{"op": "add", "value": sidecar,
                  "path": "/spec/rayClusterConfig/workerGroupSpecs/0/template/spec/containers/-"}]
        kubectl("patch", "rayservice", name, "-n", namespace, "--type=json", "--field-manager=platform-team",
                "-p", json.dumps(patch))
        # Then the RayService changes under the operator a few times (as status updates would), and repair rounds pass.
        for i in range(5):
            api.patch_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name,
                                               {"metadata": {"annotations": {"platform/touched": str(i)}}})
            time.sleep(1)
        time.sleep(2 * handlers.REPAIR_INTERVAL_S + 5)
        rs = rayservice(api, namespace, name)
        containers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
        extra_applies = log.count("Applied RayService") - applied
    assert extra_applies == 0, f"{extra_applies} applies after a sidecar was added"
    assert {c["name"]: c["image"] for c in containers} == {"ray-worker": "textgen-serve:0.1.0",
                                                           "log-shipper": "fluent-bit:3.2"}  # theirs is kept
