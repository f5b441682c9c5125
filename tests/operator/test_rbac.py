"""Least privilege, on the real API server (which runs OwnerReferencesPermissionEnforcement, hack/cluster):

- the chart's RBAC grants exactly the documented set (the table in charts/textgen-operator/README.md), as
  `kubectl auth can-i --list` reports it for the operator's ServiceAccount, in both RBAC modes;
- the operator running with nothing but that RBAC (a kubeconfig holding its ServiceAccount's token) creates the
  NetworkPolicy and the RayService of a TextGenService, KubeRay makes the Ray token Secret and the pods, and the
  NetworkPolicy selects exactly those pods on the documented ports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from textgen_operator import constants as C
from textgen_operator.networkpolicy import CONTROL_PLANE_PORTS, policy_name
from textgen_operator.ray_auth import TOKEN_KEY, auth_secret_name

from tests.chart.chart_utils import CHART, documented_rbac, helm
from tests.operator.tgs_common import ROOT, create_tgs, get, load_sample
from tests.support import wait_for

pytestmark = pytest.mark.cluster



def documented_rules() -> set[tuple[str, frozenset[str]]]:
    """The README table's rows as `kubectl auth can-i --list` names them: `resource.group[/subresource]`, verbs."""
    rows = set()
    for (group, resource), verbs in documented_rbac().items():
        if group:
            base, _, sub = resource.partition("/")
            resource = f"{base}.{group}" + (f"/{sub}" if sub else "")
        rows.add((resource, frozenset(verbs)))
    return rows


def can_i_list(kubectl, namespace: str, sa: str) -> set[tuple[str, frozenset[str]]]:
    out = kubectl("auth", "can-i", "--list", "-n", namespace, f"--as=system:serviceaccount:{namespace}:{sa}").stdout
    rows = set()
    for line in out.splitlines()[1:]:
        m = re.match(r"^(\S+)\s+\[\]\s+\[\]\s+\[(.*)\]$", line.strip())
        if m:  # resource rows (non-resource URLs and resource-name rows are not ours to grant)
            rows.add((m.group(1), frozenset(m.group(2).split())))
    return rows


def render(release: str, namespace: str, *values: str) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace,
            "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    for v in values:
        args += ["--set", v]
    return helm(*args).stdout


@pytest.fixture
def chart_rbac(kubectl, namespace):
    """Install the chart's ServiceAccount and RBAC (release named after the namespace, so cluster-scoped names do not
    collide with other tests); yields (manifests installer, ServiceAccount name); removes the cluster-scoped objects."""
    installed: list[str] = []
    release = f"r{namespace[-6:]}"

    def install(*values: str) -> str:
        text = render(release, namespace, *values)
        kubectl("apply", "-f", "-", input=text)
        installed.append(text)
        sa = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "ServiceAccount")
        return sa["metadata"]["name"]

    try:
        yield install
    finally:
        for text in installed:
            kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=text, check=False)


@pytest.mark.parametrize("mode", ["cluster-wide", "watchNamespace"])
def test_chart_rbac_is_exactly_the_documented_set(kubectl, namespace, chart_rbac, mode):
    sa = chart_rbac(*(["watchNamespace=" + namespace] if mode == "watchNamespace" else []))
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    everyone = can_i_list(kubectl, namespace, "nobody")  # what every authenticated user may do (self reviews)
    want = documented_rules()
    got = wait_for(lambda: (rows := can_i_list(kubectl, namespace, sa) - everyone) == want and rows or None,
                   "the operator's rules to match the README table", timeout=15, interval=1)
    assert got == want


def sa_kubeconfig(kubectl, kubeconfig: str, namespace: str, sa: str, path: Path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token), nothing else."""
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa, "namespace": namespace}}],
        "current-context": sa,
    }))
    path.chmod(0o600)
    return str(path)


def selected(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"} and selector["matchLabels"], selector  # the only form we build
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_operator_with_only_the_charts_rbac_creates_rayservices(api, k8s_api, kubectl, kubeconfig, namespace,
                                                                 crd_installed, chart_rbac, tmp_path):
    sa = chart_rbac("watchNamespace=" + namespace)
    config = sa_kubeconfig(kubectl, kubeconfig, namespace, sa, tmp_path / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": config,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TEXTGEN_NETWORK_POLICY", None)  # the defaults: KubeRay's operator as the control-plane peer
    proc = subprocess.Popen([sys.executable, "-m", "textgen_operator", "--namespace", namespace, "--log-format",
                             "plain", "--metrics-port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    try:
        create_tgs(api, namespace, doc)
        rs = wait_for(lambda: proc.poll() is None and get(api, namespace, C.RAYSERVICE_PLURAL, name) or
                      (proc.poll() is not None and pytest.fail(f"operator exited {proc.returncode}")),
                      "the RayService made by the least-privileged operator", timeout=90)
        (ref,) = rs["metadata"]["ownerReferences"]
        assert ref["blockOwnerDeletion"] is True and ref["controller"] is True  # what the admission plugin checks
        assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
        wait_for(lambda: (get(api, namespace, C.PLURAL, name, C.GROUP, C.VERSION).get("status") or {})
                 .get("conditions"), "the status the operator patches")

        net = client.NetworkingV1Api(k8s_api)
        policy = k8s_api.sanitize_for_serialization(net.read_namespaced_network_policy(policy_name(name), namespace))
        assert policy["metadata"]["ownerReferences"][0]["name"] == name

        # KubeRay: the RayCluster, its token Secret, its pods with the token from that Secret.
        core = client.CoreV1Api(k8s_api)
        pods = wait_for(lambda: (p := core.list_namespaced_pod(namespace).items) and len(p) >= 2 and p,
                        "the head and worker pods KubeRay creates", timeout=90)
        cluster = pods[0].metadata.labels["ray.io/cluster"]
        secret = wait_for(lambda: core.list_namespaced_secret(
            namespace, field_selector=f"metadata.name={auth_secret_name(cluster)}").items, "KubeRay's token Secret")
        assert base64.b64decode(secret[0].data[TOKEN_KEY])
        head = next(p for p in pods if p.metadata.labels.get("ray.io/node-type") == "head")
        env_vars = {e.name: e for e in head.spec.containers[0].env}
        assert env_vars["RAY_AUTH_MODE"].value == "token"
        assert env_vars["RAY_AUTH_TOKEN"].value_from.secret_key_ref.name == auth_secret_name(cluster)

        # The policy selects every Ray pod KubeRay made (labels as they are on the real pods), admits the cluster's
        # own pods everywhere, the control ports only from the KubeRay operator, and 8000 from anywhere.
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        for pod in pods:
            assert selected(spec["podSelector"], pod.metadata.labels), pod.metadata.labels
        own, control, serve = spec["ingress"]
        assert "ports" not in own and all(selected(own["from"][0]["podSelector"], p.metadata.labels) for p in pods)
        assert {p["port"] for p in control["ports"]} == set(CONTROL_PLANE_PORTS.values())
        (kuberay,) = control["from"]
        assert kuberay["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}
        assert not any(selected(kuberay["podSelector"], p.metadata.labels) for p in pods)
        assert [p["port"] for p in serve["ports"]] == [C.SERVE_PORT] and "from" not in serve
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "Forbidden" not in out and "forbidden" not in out, out[-3000:]

    # NetworkPolicies switched off (networkPolicy.enabled=false): the restarted operator deletes the one it made,
    # with the chart's RBAC alone; the RayService stays.
    env["TEXTGEN_NETWORK_POLICY"] = json.dumps({"enabled": False})
    proc = subprocess.Popen([sys.executable, "-m", "textgen_operator", "--namespace", namespace, "--log-format",
                             "plain", "--metrics-port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: not net.list_namespaced_network_policy(namespace).items or
                 (proc.poll() is not None and pytest.fail(f"operator exited {proc.returncode}")),
                 "the NetworkPolicy deleted once policies are switched off", timeout=60)
        assert get(api, namespace, C.RAYSERVICE_PLURAL, name)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "Deleted NetworkPolicy" in out and "orbidden" not in out, out[-3000:]
