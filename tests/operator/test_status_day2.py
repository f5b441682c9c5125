"""Day-2 status: READY from Serve's own replica states, scaled to zero (never Degraded), a new cluster that cannot
be scheduled, and where the ingress runs when a service scales to zero."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from textgen_operator import constants as C
from textgen_operator.builder import build_serve_config
from textgen_operator.serve_status import ModelReplicas, fetch_model_replicas, parse_model_replicas
from textgen_operator.spec import TextGenServiceSpec
from textgen_operator.status import unschedulable_pods

from tests.operator.status_helpers import T0, build_status, conds, rayservice, tgs

RUNNING_RS = dict(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", ""), model=("HEALTHY", ""))
ZERO_SPEC = {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 3}}


def applications(states, target):
    """The shape of Ray's GET /api/serve/applications/ (ray.serve.schema.ServeInstanceDetails), trimmed."""
    replicas = [{"replica_id": f"r{i}", "state": s, "node_id": "n", "actor_id": "a"} for i, s in enumerate(states)]
    return {"applications": {C.APP_NAME: {"status": "RUNNING", "deployments": {
        C.MODEL_DEPLOYMENT: {"status": "UPSCALING", "target_num_replicas": target, "replicas": replicas},
        C.INGRESS_DEPLOYMENT: {"status": "HEALTHY", "target_num_replicas": 1, "replicas": [{"state": "RUNNING"}]},
    }}}}


def test_parse_counts_only_running_model_replicas():
    seen = parse_model_replicas(applications(["RUNNING", "STARTING", "RUNNING"], 3))
    assert seen == ModelReplicas(running=2, target=3, states=("RUNNING", "STARTING", "RUNNING"))
    assert parse_model_replicas({"applications": {}}) is None
    assert parse_model_replicas({"applications": {C.APP_NAME: {"deployments": {}}}}) is None


def test_ready_replicas_come_from_serve_during_a_scale_up():
    rs = rayservice(**RUNNING_RS)
    s = build_status(tgs(spec={"replicas": 3}), rs, now=T0, serve=ModelReplicas(2, 3, ("RUNNING", "RUNNING", "STARTING")))
    assert (s["readyReplicas"], s["replicas"]) == (2, 3)  # KubeRay alone says HEALTHY: all-or-nothing would be 3
    s = build_status(tgs(spec={"replicas": 3}), rs, now=T0)
    assert s["readyReplicas"] == 3  # Serve unknown this round: KubeRay's view


def test_scaled_to_zero_is_ready_never_degraded():
    s = build_status(tgs(spec=ZERO_SPEC), rayservice(**RUNNING_RS), now=T0, serve=ModelReplicas(0, 0, ()))
    assert conds(s) == {"Ready": ("True", "ScaledToZero"), "Progressing": ("False", "ScaledToZero"),
                        "Degraded": ("False", "AsExpected")}
    assert (s["readyReplicas"], s["replicas"]) == (0, 0)
    s = build_status(tgs(spec=ZERO_SPEC), rayservice(**RUNNING_RS), now=T0, serve=ModelReplicas(0, 1, ("STARTING",)))
    assert conds(s)["Ready"] == ("True", "ScalingFromZero") and conds(s)["Progressing"] == ("True", "ScalingFromZero")
    assert (s["readyReplicas"], s["replicas"]) == (0, 1)


def test_zero_running_without_scale_to_zero_is_not_called_scaled_to_zero():
    s = build_status(tgs(spec={"replicas": 1}), rayservice(**RUNNING_RS), now=T0, serve=ModelReplicas(0, 1, ()))
    assert conds(s)["Ready"] == ("True", "NonZeroServeEndpoints") and s["readyReplicas"] == 0
    failed = dict(RUNNING_RS, app=("DEPLOY_FAILED", "boom"))
    s = build_status(tgs(spec=ZERO_SPEC), rayservice(**failed), now=T0, serve=ModelReplicas(0, 0, ()))
    assert conds(s)["Degraded"] == ("True", "ApplicationDeployFailed") and conds(s)["Ready"][1] != "ScaledToZero"


def pod(name, phase, scheduled=None, deleting=False):
    conditions = [] if scheduled is None else [
        {"type": "PodScheduled", "status": scheduled[0], "reason": "Unschedulable", "message": scheduled[1]}]
    meta = {"name": name, **({"deletionTimestamp": T0} if deleting else {})}
    return {"metadata": meta, "status": {"phase": phase, "conditions": conditions}}


def test_unschedulable_new_cluster_is_named_not_progressing_forever():
    why = "0/1 nodes are available: 1 Insufficient cpu."
    pods = [pod("new-head", "Pending", ("False", why)), pod("new-worker", "Pending", ("True", "")),
            pod("old-head", "Running", ("True", "")), pod("gone", "Pending", ("False", why), deleting=True)]
    assert unschedulable_pods(pods) == f"new-head: {why}"
    assert unschedulable_pods(pods[1:3]) is None
    rs = rayservice(**RUNNING_RS, pending="demo-new12")
    s = build_status(tgs(), rs, now=T0, unschedulable=unschedulable_pods(pods))
    assert conds(s)["Progressing"] == ("False", "NewClusterUnschedulable")
    assert conds(s)["Ready"][0] == "True" and conds(s)["Degraded"][0] == "False"  # the old cluster still serves
    message = next(c["message"] for c in s["conditions"] if c["type"] == "Progressing")
    assert f"new-head: {why}" in message
    assert conds(build_status(tgs(), rs, now=T0))["Progressing"] == ("True", "PreparingNewCluster")
    # KubeRay prepares a RayService's first cluster as a pending one too: there is no old cluster serving then.
    first = rayservice(ready=("False", "Initializing", ""), pending="demo-first")
    s = build_status(tgs(), first, now=T0, unschedulable=f"new-head: {why}")
    assert conds(s)["Progressing"] == ("False", "ClusterUnschedulable")
    assert "old one" not in next(c["message"] for c in s["conditions"] if c["type"] == "Progressing")


def test_ingress_moves_to_the_head_only_when_scaling_to_zero():
    def ingress(spec):
        config = build_serve_config(TextGenServiceSpec.model_validate(spec))
        return next(d for d in config["applications"][0]["deployments"] if d["name"] == C.INGRESS_DEPLOYMENT)

    # On a worker it reserves CPU, which would keep a worker busy for KubeRay's autoscaler forever.
    assert ingress({"replicas": 1})["ray_actor_options"] == {"num_cpus": C.INGRESS_CPUS}
    zero = ingress(ZERO_SPEC)
    assert zero["ray_actor_options"] == {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
    assert zero["autoscaling_config"]["min_replicas"] == 1  # someone must hold the first request after zero


def test_fetch_returns_none_quickly_when_the_head_is_down_or_silent():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert fetch_model_replicas(f"http://127.0.0.1:{port}") is None  # nothing listens: refused at once

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) but never answers
    try:
        t0 = time.monotonic()
        assert fetch_model_replicas(f"http://127.0.0.1:{silent.getsockname()[1]}", token="t", timeout=0.5) is None
        assert time.monotonic() - t0 < 3
    finally:
        silent.close()


@pytest.mark.parametrize("body, expected", [
    (json.dumps(applications(["RUNNING", "STARTING"], 2)).encode(), ModelReplicas(1, 2, ("RUNNING", "STARTING"))),
    (b"not json", None),
    (b'{"applications": {}}', None),
])
def test_fetch_reads_a_real_http_answer(body, expected):
    """A real HTTP exchange on loopback (one answer per connection): bad JSON and an app not deployed are unknown;
    the bearer token travels in the Authorization header."""
    server = socket.create_server(("127.0.0.1", 0))
    seen = []

    def answer():
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(65536).decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert fetch_model_replicas(f"http://127.0.0.1:{server.getsockname()[1]}", token="s3cret") == expected
        thread.join(5)
    finally:
        server.close()
    assert seen and seen[0].startswith("GET /api/serve/applications/ ")
    assert "Authorization: Bearer s3cret" in seen[0]
