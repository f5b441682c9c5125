"""The seed's scale in simulation: kwok nodes + the real kube-scheduler beside the tests' local control plane.

`sim` (session) builds kwok (hack/sim/build.sh; kube-scheduler comes from hack/node/build.sh), then on the tests'
control plane (tests/k8s_fixtures.py) starts kube-scheduler and kwok, creates SIM_NODES m5.4xlarge Nodes, and a
MutatingAdmissionPolicy; everything is removed and both processes stopped at the end.

Only our pods land on the fake nodes, and our scheduler touches no one else's: the control plane is shared with tests
running at the same time whose Ray pods select m5.4xlarge too. So the fake nodes carry kwok's documented
`kwok.x-k8s.io/node=fake:NoSchedule` taint, the scheduler runs one profile named `textgen-sim` (pods asking for the
default scheduler are not its business), and the admission policy gives pods created in namespaces labelled
`textgen.dev/sim=true` (and only those) that scheduler name and the toleration. The bundle itself is unchanged:
KubeRay creates the pods from the operator's RayService as it would on EKS.

The operator is the one tests/operator runs (`run_operator`, tests/operator/fixtures.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.run_local import free_port
from tests.k8s_fixtures import BIN
from tests.sim.sim_nodes import KWOK_ANNOTATION, KWOK_TAINT, NODE, SIM_LABEL, SIM_NODES
from tests.support import ROOT, stop_process, wait_for

SCHEDULER_NAME = "textgen-sim"
POLICY = "textgen-sim-fake-nodes"
SIM_LOCK = ROOT / ".cache" / "sim.lock"


def _toleration_patch() -> str:
    tol = ", ".join(f'"{k}": "{v}"' for k, v in {**KWOK_TAINT, "operator": "Equal"}.items())
    return (f'[JSONPatch{{op: "replace", path: "/spec/schedulerName", value: "{SCHEDULER_NAME}"}}, '
            f'has(object.spec.tolerations) ? JSONPatch{{op: "add", path: "/spec/tolerations/-", value: {{{tol}}}}} '
            f': JSONPatch{{op: "add", path: "/spec/tolerations", value: [{{{tol}}}]}}]')


def admission_policy() -> list[dict]:
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
         "metadata": {"name": POLICY},
         "spec": {"failurePolicy": "Fail", "reinvocationPolicy": "Never",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                  "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": _toleration_patch()}}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
         "metadata": {"name": POLICY},
         "spec": {"policyName": POLICY,
                  "matchResources": {"namespaceSelector": {"matchLabels": {SIM_LABEL[0]: SIM_LABEL[1]}}}}},
    ]


def _pid_file(name: str) -> Path:
    return ROOT / ".cache" / "sim" / f"{name}.pid"


def _stop_leftover(name: str) -> None:
    """A process of ours that a killed session left running (its PID file, checked against /proc/PID/exe)."""
    try:
        pid = int(_pid_file(name).read_text())
        if os.readlink(f"/proc/{pid}/exe").startswith(str(BIN / name)):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, ValueError, PermissionError):
        pass
    _pid_file(name).unlink(missing_ok=True)


def _start(name: str, args: list[str], logs: Path) -> subprocess.Popen:
    _stop_leftover(name)
    log = open(logs / f"{name}.log", "w")
    proc = subprocess.Popen([str(BIN / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(name).write_text(f"{proc.pid}\n")
    return proc


def _stop(proc: subprocess.Popen, name: str) -> None:
    stop_process(proc, 15)
    _pid_file(name).unlink(missing_ok=True)


def _nodes_ready(kubectl) -> bool:
    nodes = json.loads(kubectl("get", "nodes", "-l", "=".join(SIM_LABEL), "-o", "json").stdout)["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n.get("status", {}).get("conditions") or [])]
    return len(ready) == SIM_NODES


@pytest.fixture(scope="session")
def sim(kubeconfig, kubectl, tmp_path_factory, request):
    """Names of the ready simulated nodes; kube-scheduler and kwok run meanwhile."""
    t0 = time.monotonic()
    subprocess.run(["bash", str(ROOT / "hack" / "sim" / "build.sh")], check=True, cwd=ROOT,
                   env={**os.environ, "PY": sys.executable, "BIN": str(BIN)})
    logs = tmp_path_factory.mktemp("sim-logs")
    SIM_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(SIM_LOCK, "w") as lock, contextlib.ExitStack() as stack:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one simulation per checkout at a time: the nodes and policy are global
        config = logs / "scheduler.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig}, "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": SCHEDULER_NAME}]}))
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": admission_policy()}))
        stack.callback(kubectl, "delete", "--ignore-not-found", "mutatingadmissionpolicybinding,"
                       "mutatingadmissionpolicy", POLICY, check=False)
        names = [f"sim-m5-4xlarge-{i}" for i in range(SIM_NODES)]
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": [NODE.manifest(n) for n in names]}))
        stack.callback(kubectl, "delete", "nodes", "-l", "=".join(SIM_LABEL), "--ignore-not-found", check=False)
        scheduler = _start("kube-scheduler", [
            f"--config={config}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--profiling=false", "-v=1"], logs)
        stack.callback(_stop, scheduler, "kube-scheduler")
        kwok = _start("kwok", [
            f"--kubeconfig={kubeconfig}", f"--config={ROOT / '.cache' / 'sim' / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={'='.join(KWOK_ANNOTATION)}",
            "--node-ip=10.99.0.1", "--cidr=10.99.0.0/16"], logs)
        stack.callback(_stop, kwok, "kwok")
        wait_for(lambda: _nodes_ready(kubectl) or scheduler.poll() is not None or kwok.poll() is not None,
                 "kwok to make the simulated nodes Ready", timeout=60)
        for proc, name in ((scheduler, "kube-scheduler"), (kwok, "kwok")):
            assert proc.poll() is None, f"{name} exited: {(logs / f'{name}.log').read_text()[-3000:]}"
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            print(f"\n[sim-scale] {SIM_NODES} kwok nodes Ready, kube-scheduler and kwok up in "
                  f"{time.monotonic() - t0:.1f} s (logs in {logs})", flush=True)  # shown without -s too
        yield names


@pytest.fixture
def sim_ns(sim, kubectl, namespace, k8s_api) -> str:
    """This test's namespace, labelled for the admission policy, once the policy is seen acting there."""
    from kubernetes import client

    kubectl("label", "namespace", namespace, "=".join(SIM_LABEL))
    core = client.CoreV1Api(k8s_api)
    probe = client.V1Pod(metadata=client.V1ObjectMeta(name="policy-probe"),
                         spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="never-pulled")]))

    def mutated():  # a server-side dry run goes through admission, mutating policies included, and stores nothing
        pod = core.create_namespaced_pod(namespace, probe, dry_run="All")
        return pod.spec.scheduler_name == SCHEDULER_NAME and any(
            t.key == KWOK_TAINT["key"] for t in pod.spec.tolerations or [])

    wait_for(mutated, f"the admission policy {POLICY} to act in {namespace}", timeout=30)
    # the nodes to ourselves: an earlier test's namespace may still be going away with its pods on them
    wait_for(lambda: not core.list_pod_for_all_namespaces(field_selector=f"spec.schedulerName={SCHEDULER_NAME}").items,
             "the simulated nodes to be empty of earlier tests' pods", timeout=120)
    return namespace
