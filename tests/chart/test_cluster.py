"""The chart and the plain manifests on a real API server (the local control plane, or $KUBECONFIG with
TEXTGEN_USE_EXISTING_CLUSTER=1). No kubelet runs there, so nothing waits for pods to become ready: the tests check
what the API server and the controllers do (CRD established, objects and RBAC created, pods admitted)."""

from __future__ import annotations

import json

import pytest
import yaml

from serve_app.run_local import free_port
from tests.chart.chart_utils import CHART, ROOT, helm
from tests.support import stop_process, wait_for

pytestmark = pytest.mark.cluster

CRD_NAME = "textgenservices.textgen.dev"
PLAIN_NAMESPACE = "textgen-system"


def kget(kubectl, *args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def exists(kubectl, *args: str) -> bool:
    proc = kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False)
    assert proc.returncode == 0, proc.stderr
    return bool(proc.stdout.strip())



def can_i(kubectl, sa: str, verb: str, resource: str, namespace: str) -> bool:
    proc = kubectl("auth", "can-i", verb, resource, "--as", sa, "-n", namespace, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stdout + proc.stderr
    return answer == "yes"


def operator_pods(kubectl, namespace: str, release: str) -> list[dict]:
    return kget(kubectl, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]


def test_helm_install_and_uninstall(kubeconfig, kubectl, namespace):
    release = f"tg-{namespace}"
    fullname = f"{release}-textgen-operator"
    sa = f"system:serviceaccount:{namespace}:{fullname}"
    installed = False
    try:
        helm("install", release, str(CHART), "--kubeconfig", kubeconfig, "--namespace", namespace,
             "-f", str(CHART / "ci" / "gpt2-values.yaml"), timeout=180)
        installed = True
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

        dep = kget(kubectl, "deployment", fullname, "-n", namespace)
        assert dep["spec"]["replicas"] == 1
        assert exists(kubectl, "serviceaccount", fullname, "-n", namespace)
        role = kget(kubectl, "clusterrole", fullname)
        assert {r["apiGroups"][0] for r in role["rules"]} == {"textgen.dev", "ray.io", "", "apiextensions.k8s.io",
                                                                 "networking.k8s.io"}
        binding = kget(kubectl, "clusterrolebinding", fullname)
        assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": fullname, "namespace": namespace}

        # The RBAC the API server enforces for the operator's ServiceAccount: what it needs, and no more.
        assert can_i(kubectl, sa, "watch", "textgenservices.textgen.dev", namespace)
        assert can_i(kubectl, sa, "patch", "textgenservices.textgen.dev/status", namespace)
        assert can_i(kubectl, sa, "create", "rayservices.ray.io", "default")  # cluster-wide mode
        assert can_i(kubectl, sa, "list", "namespaces", namespace)
        assert not can_i(kubectl, sa, "delete", "textgenservices.textgen.dev", namespace)
        assert not can_i(kubectl, sa, "create", "pods", namespace)
        # Secrets: get (KubeRay's per-cluster Ray token, read by name), never list.
        assert can_i(kubectl, sa, "get", "secrets", namespace)
        assert not can_i(kubectl, sa, "list", "secrets", namespace)

        # The TextGenService from values, with the CRD's defaults filled in by the API server.
        tgs = kget(kubectl, "tgs", "gpt2", "-n", namespace)
        assert tgs["spec"]["replicas"] == 2
        from textgen_operator.constants import RAY_VERSION

        assert tgs["spec"]["cluster"]["rayVersion"] == RAY_VERSION
        assert tgs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

        # The controller manager creates the operator pod (it stays Pending: no scheduler, no kubelet): the
        # pod passed admission with its ServiceAccount and security settings.
        pods = wait_for(lambda: operator_pods(kubectl, namespace, release), "the operator pod to be created")
        assert pods[0]["spec"]["serviceAccountName"] == fullname
        assert pods[0]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

        status = helm("status", release, "--kubeconfig", kubeconfig, "--namespace", namespace, "-o", "json")
        assert json.loads(status.stdout)["info"]["status"] == "deployed"

        helm("uninstall", release, "--kubeconfig", kubeconfig, "--namespace", namespace, timeout=180)
        installed = False
        wait_for(lambda: not exists(kubectl, "deployment", fullname, "-n", namespace), "the Deployment to go")
        assert not exists(kubectl, "clusterrole", fullname)
        assert not exists(kubectl, "clusterrolebinding", fullname)
        assert not exists(kubectl, "serviceaccount", fullname, "-n", namespace)
        wait_for(lambda: not exists(kubectl, "tgs", "gpt2", "-n", namespace), "the TextGenService to go")
        # Helm never deletes what it installed from crds/: the CRD stays, and with it other TextGenServices.
        crd = kget(kubectl, "crd", CRD_NAME)
        assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    finally:
        if installed:
            helm("uninstall", release, "--kubeconfig", kubeconfig, "--namespace", namespace, check=False)


def test_helm_install_limited_to_one_namespace(kubeconfig, kubectl, namespace):
    release = f"tn-{namespace}"
    fullname = f"{release}-textgen-operator"
    sa = f"system:serviceaccount:{namespace}:{fullname}"
    try:
        helm("install", release, str(CHART), "--kubeconfig", kubeconfig, "--namespace", namespace,
             "--set", f"watchNamespace={namespace}", "--set", "textGenServices[0].name=demo", timeout=180)
        role = kget(kubectl, "role", fullname, "-n", namespace)
        assert {r["apiGroups"][0] for r in role["rules"]} == {"textgen.dev", "ray.io", "", "networking.k8s.io"}
        assert exists(kubectl, "rolebinding", fullname, "-n", namespace)
        assert not exists(kubectl, "clusterrole", fullname)
        assert exists(kubectl, "clusterrole", f"{fullname}-discovery")
        assert can_i(kubectl, sa, "create", "rayservices.ray.io", namespace)
        assert not can_i(kubectl, sa, "create", "rayservices.ray.io", "default")
        assert can_i(kubectl, sa, "list", "namespaces", namespace)  # kopf's namespace scanning (read-only)
        # Secrets: get (KubeRay's per-cluster Ray token, read by name), never list.
        assert can_i(kubectl, sa, "get", "secrets", namespace)
        assert not can_i(kubectl, sa, "list", "secrets", namespace)
        assert can_i(kubectl, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", namespace)
        assert exists(kubectl, "tgs", "demo", "-n", namespace)
        args = kget(kubectl, "deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={namespace}" in args
    finally:
        helm("uninstall", release, "--kubeconfig", kubeconfig, "--namespace", namespace, check=False)
    assert not exists(kubectl, "clusterrole", f"{fullname}-discovery")


def test_plain_manifests_apply_cleanly(kubectl):
    m = ROOT / "manifests"
    first = ["-f", str(m / "crd"), "-f", str(m / "operator" / "namespace.yaml")]
    rest = ["-f", str(m / "rbac"), "-f", str(m / "operator" / "deployment.yaml")]
    # A namespace still terminating from an earlier run would refuse new objects: let it finish first.
    wait_for(lambda: not exists(kubectl, "namespace", PLAIN_NAMESPACE) or
             kget(kubectl, "namespace", PLAIN_NAMESPACE)["status"].get("phase") != "Terminating",
             f"namespace {PLAIN_NAMESPACE} to finish terminating", timeout=90)
    namespace_existed = exists(kubectl, "namespace", PLAIN_NAMESPACE)
    docs = [d for p in sorted(m.glob("rbac/*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    cluster_scoped = [(d["kind"].lower(), d["metadata"]["name"]) for d in docs if "namespace" not in d["metadata"]]
    docs += [d for d in yaml.safe_load_all((m / "operator" / "deployment.yaml").read_text()) if d]
    assert cluster_scoped
    try:
        # Server-side dry runs first: every object through admission and schema validation, nothing stored.
        proc = kubectl("apply", "--dry-run=server", *first)
        assert "customresourcedefinition.apiextensions.k8s.io/textgenservices.textgen.dev" in proc.stdout
        kubectl("apply", *first)
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
        proc = kubectl("apply", "--dry-run=server", *rest)
        assert "deployment.apps/textgen-operator" in proc.stdout
        kubectl("apply", *rest)
        # Idempotent: a second apply changes nothing.
        again = kubectl("apply", *rest).stdout
        assert "configured" not in again and again.count("unchanged") == len(docs), again
        assert kget(kubectl, "deployment", "textgen-operator", "-n", PLAIN_NAMESPACE)["spec"]["replicas"] == 1
        assert can_i(kubectl, f"system:serviceaccount:{PLAIN_NAMESPACE}:textgen-operator", "patch",
                     "rayservices.ray.io", "default")
        # The namespace enforces the `restricted` Pod Security Standard; the operator pod is still admitted.
        ns = kget(kubectl, "namespace", PLAIN_NAMESPACE)
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        wait_for(lambda: operator_pods(kubectl, PLAIN_NAMESPACE, "textgen-operator"), "the operator pod")
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", *rest, check=False)
        if not namespace_existed:
            kubectl("delete", "namespace", PLAIN_NAMESPACE, "--ignore-not-found", "--timeout=60s", check=False)
    for kind, name in cluster_scoped:
        assert not exists(kubectl, kind, name)


def test_operator_works_with_only_the_charts_rbac(kubeconfig, kubectl, namespace, tmp_path):
    """Run the operator with the Deployment's own command line, authenticated as the chart's ServiceAccount
    (a TokenRequest token): its health endpoint answers, and it turns the TextGenService from values into a
    RayService. So the least-privilege RBAC is also enough."""
    import os
    import subprocess
    import sys
    import urllib.request

    release = f"to-{namespace}"
    fullname = f"{release}-textgen-operator"
    port = free_port()
    proc = None
    try:
        helm("install", release, str(CHART), "--kubeconfig", kubeconfig, "--namespace", namespace,
             "--set", f"watchNamespace={namespace}", "--set", f"operator.healthPort={port}",
             "--set", "operator.logFormat=plain", "--set", "textGenServices[0].name=demo",
             "--set", "textGenServices[0].spec.replicas=2", timeout=180)
        token = kubectl("create", "token", fullname, "-n", namespace, "--duration", "10m").stdout.strip()
        admin = yaml.safe_load(open(kubeconfig).read())
        cluster = admin["clusters"][0]["cluster"]
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}],
        }))
        container = kget(kubectl, "deployment", fullname, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "textgen_operator"]
        env = dict(os.environ, KUBECONFIG=str(tmp_path / "kubeconfig"),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]))
        env.pop("WATCH_NAMESPACE", None)
        log = open(tmp_path / "operator.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "textgen_operator", *container["args"]], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy():
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, "the operator's /healthz", timeout=60)
        rs = wait_for(lambda: exists(kubectl, "rayservice", "demo", "-n", namespace) and
                      kget(kubectl, "rayservice", "demo", "-n", namespace), "the RayService", timeout=90)
        assert rs["metadata"]["ownerReferences"][0]["kind"] == "TextGenService"
        wait_for(lambda: kget(kubectl, "tgs", "demo", "-n", namespace).get("status"), "TextGenService status",
                 timeout=60)
        # The operator fits the memory limit the chart gives it (256Mi by default), with room to spare.
        limit = container["resources"]["limits"]["memory"]
        assert limit.endswith("Mi")
        rss_kib = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS:"))
        print(f"operator RSS {rss_kib / 1024:.0f} MiB (limit {limit})")
        assert rss_kib / 1024 < 0.8 * int(limit[:-2]), (rss_kib, limit)
        text = (tmp_path / "operator.log").read_text()
        assert "Forbidden" not in text and "Not enough permissions" not in text, text[-3000:]
    finally:
        if proc is not None:
            stop_process(proc)
        helm("uninstall", release, "--kubeconfig", kubeconfig, "--namespace", namespace, check=False)


def test_example_textgenservices_pass_the_api_servers_validation(kubectl, namespace):
    """Every TextGenService in ci/*.yaml through the real API server (schema, defaults and CEL rules), as a
    server-side dry run in a scratch namespace."""
    from tests.chart.chart_utils import CI_VALUES, by_kind, render_objects

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    count = 0
    for values in CI_VALUES:
        for tgs in by_kind(render_objects("-f", str(values), namespace=namespace), "TextGenService"):
            tgs["metadata"]["namespace"] = namespace
            proc = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", "-o", "json",
                           input=json.dumps(tgs))
            applied = json.loads(proc.stdout)
            assert applied["spec"]["cluster"]["rayVersion"], values.name  # defaults filled in
            count += 1
    assert count >= 3
