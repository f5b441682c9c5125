"""Every sample's Ray pods meet the restricted Pod Security Standard (checked by pss_restricted.py, written from the
standard's rules), including the containers KubeRay adds to our templates: the wait-for-GCS init container of the
workers (KubeRay copies the Ray container's securityContext into it) and the autoscaler sidecar of the head
(autoscalerOptions.securityContext/volumeMounts). The cluster test (test_pod_security_cluster.py) has the API
server's own PodSecurity admission judge the pods KubeRay really creates."""

from __future__ import annotations

import re

import pytest
from textgen_operator import pod_security as PS

from tests.operator.pss_restricted import violations
from tests.operator.tgs_common import ROOT, effective_pods, load_sample


def serve_image_user() -> tuple[int, int]:
    users = re.findall(r"^USER (\d+):(\d+)\s*$", (ROOT / "images" / "serve" / "Dockerfile").read_text(), re.M)
    uid, gid = users[-1]
    return int(uid), int(gid)


def test_sample_ray_pods_meet_the_restricted_standard(sample):
    _, doc = sample
    for kind, pod in effective_pods(doc).items():
        assert violations(pod) == [], kind


def test_ray_pods_run_as_the_serve_images_user_without_a_token(sample):
    _, doc = sample
    uid, gid = serve_image_user()
    for kind, pod in effective_pods(doc).items():
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid), kind
        assert pod["automountServiceAccountToken"] is False, kind
        ray = pod["containers"][0]
        assert not any(m["mountPath"].startswith("/var/run/secrets") for m in ray.get("volumeMounts", [])), kind


def test_only_the_autoscaler_sidecar_gets_an_api_token(sample):
    _, doc = sample
    pods = effective_pods(doc)
    head = pods["head"]
    sidecars = [c for c in head["containers"] if c["name"] == "autoscaler"]
    if not doc["spec"].get("autoscaling", {}).get("enabled"):
        assert not sidecars and "volumes" not in head
        return
    (sidecar,) = sidecars
    (mount,) = sidecar["volumeMounts"]
    assert (mount["mountPath"], mount["readOnly"]) == (PS.SA_DIR, True)
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    assert {"token"} == {s["serviceAccountToken"]["path"] for s in sources if "serviceAccountToken" in s}
    assert "volumes" not in pods["worker"]


HARDENING = {
    "runAsNonRoot": (lambda p: [p["securityContext"].pop("runAsNonRoot"),
                                [c["securityContext"].pop("runAsNonRoot") for c in p["containers"]]],
                     "run_as_non_root"),
    "seccomp": (lambda p: [p["securityContext"].pop("seccompProfile"),
                           [c["securityContext"].pop("seccompProfile") for c in p["containers"]]],
                "restricted_seccomp"),
    "allowPrivilegeEscalation": (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                                 "privilege_escalation"),
    "drop ALL": (lambda p: p["containers"][0]["securityContext"].pop("capabilities"), "restricted_capabilities"),
    "root user": (lambda p: p["securityContext"].update(runAsUser=0), "run_as_non_root_user"),
    "hostPath": (lambda p: p.setdefault("volumes", []).append({"name": "h", "hostPath": {"path": "/"}}),
                 "host_path_volumes"),
    "hostNetwork": (lambda p: p.update(hostNetwork=True), "host_namespaces"),
}


@pytest.mark.parametrize("weaken", sorted(HARDENING))
def test_the_checker_catches_each_missing_setting(weaken):
    """Each hardening setting is load-bearing: without it the checker (and the standard) refuses the pod."""
    pod = effective_pods(load_sample("fixed"))["head"]
    change, control = HARDENING[weaken]
    change(pod)
    assert any(v.startswith(control + ":") for v in violations(pod)), violations(pod)
