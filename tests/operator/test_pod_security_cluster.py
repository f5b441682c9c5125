"""On the local control plane: in a namespace that enforces the restricted Pod Security Standard, TextGenServices
(fixed and autoscaling) become Ray head and worker Pods that KubeRay really creates: the API server's PodSecurity
admission lets them in, and KubeRay records no failed create. Pods stay Pending (no kubelet here)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.operator.pss_restricted import violations
from tests.operator.tgs_common import create_tgs, load_sample
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def ray_pods(core, namespace: str, name: str) -> dict[str, list]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"textgen.dev/service={name}").items
    out: dict[str, list] = {"head": [], "worker": []}
    for p in pods:
        out.setdefault(p.metadata.labels.get("ray.io/node-type", ""), []).append(p)
    return out


def test_restricted_namespace_gets_ray_pods_with_no_pod_security_violation(api, k8s_api, kubectl, namespace,
                                                                           run_operator):
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")
    core = client.CoreV1Api(k8s_api)
    # Control: the label is enforced here, so a Ray pod without our settings is refused.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "ray-head", "image": "textgen-serve:0.1.0"}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, bare, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body

    docs = [load_sample("fixed"), load_sample("autoscaling")]
    with run_operator():
        for doc in docs:
            create_tgs(api, namespace, doc)
        for doc in docs:
            name = doc["metadata"]["name"]
            pods = wait_for(lambda: (lambda p: p if p["head"] and p["worker"] else None)(ray_pods(core, namespace, name)),
                            f"KubeRay to create the head and worker pods of {name}", timeout=180)
            for pod in pods["head"] + pods["worker"]:
                spec = k8s_api.sanitize_for_serialization(pod.spec)
                assert violations(spec) == [], pod.metadata.name
            (head,) = pods["head"]
            names = [c.name for c in head.spec.containers]
            if doc["spec"].get("autoscaling", {}).get("enabled"):
                # KubeRay's autoscaler sidecar runs under KubeRay's per-cluster ServiceAccount; only it has a token.
                assert names == ["ray-head", "autoscaler"], names
                assert head.spec.service_account_name == head.metadata.labels["ray.io/cluster"]
                (sidecar_mount,) = [m for m in head.spec.containers[1].volume_mounts
                                    if m.mount_path.startswith("/var/run/secrets")]
                assert not [m for m in head.spec.containers[0].volume_mounts or []
                            if m.mount_path.startswith("/var/run/secrets")]
            else:
                assert names == ["ray-head"], names
            for pod in pods["head"] + pods["worker"]:
                assert pod.spec.automount_service_account_token is False
    events = core.list_namespaced_event(namespace).items
    # KubeRay's events for pods it could not create (a benign FailedToCreateRayCluster "already exists" race of
    # its RayService controller is not about pods), and any PodSecurity refusal.
    failed = [(e.reason, e.message) for e in events
              if e.reason in ("FailedToCreateHeadPod", "FailedToCreateWorkerPod", "FailedCreate")
              or "PodSecurity" in (e.message or "") or "violates" in (e.message or "")]
    assert failed == [], json.dumps(failed, indent=1)
    assert any(e.reason == "CreatedHeadPod" for e in events), sorted({e.reason for e in events})
