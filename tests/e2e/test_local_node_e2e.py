"""End to end on a real local node (hack/node): Helm installs the operator as a pod from the locally built image, a
TextGenService becomes a RayService, a RayCluster and running Ray pods, and the Serve Service answers HTTP.

One test, in the order a user goes: each step asserts what it needs and records how long it took; the timings
are printed at the end and written to .cache/e2e-local/timings.json. `make e2e-local` runs it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.k8s_fixtures import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "textgen-operator"
NAMESPACE = "textgen-e2e"
RELEASE = "textgen-operator"
TGS = "gpt2"
STAND_IN = "gpt2-random-init"  # the model `make model` builds, baked into the serve image by hack/node/images.sh

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(3600)]


def tgs_manifest(serve_image: str) -> str:
    # Sized for a 2-CPU node: head 1 CPU (Ray's head runs no replicas) + one worker of 1 CPU holding the ingress
    # (0.5 CPU) and up to two model replicas of 0.25 CPU. The operator pod asks for no CPU (see helm_install).
    # Memory admission (operator/textgen_operator/memory.py): 2 x (640 + 475 + 36 x 4 x 1.5) + 1024 MiB <= 5 GiB.
    return f"""
apiVersion: textgen.dev/v1alpha1
kind: TextGenService
metadata: {{name: {TGS}, namespace: {NAMESPACE}}}
spec:
  replicas: 1
  model: {{name: /models/{STAND_IN}}}
  serving: {{maxBatchSize: 4, defaultMaxTokens: 16, maxTokensLimit: 64, dtype: float32}}
  cluster:
    image: {serve_image}
    imagePullPolicy: Never
    nodeType: m5.4xlarge
    cpusPerReplica: 0.25
    upgradeStrategy: None
    head: {{cpus: 1, memoryGi: 3}}
    worker: {{cpus: 1, memoryGi: 5}}
"""


class Timings(dict):
    def __init__(self):
        super().__init__()
        self._t = time.monotonic()

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self[name] = round(now - self._t, 1)
        self._t = now
        print(f"[e2e] {name}: {self[name]} s", flush=True)
        return self[name]


def jget(kubectl, *args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def items(kubectl, kind: str, *selectors: str) -> list[dict]:
    return jget(kubectl, kind, "-n", NAMESPACE, *selectors)["items"]


def pod_phases(kubectl, node_type: str) -> list[str]:
    return [p["status"].get("phase", "") for p in items(kubectl, "pods", "-l", f"ray.io/node-type={node_type}")
            if not p["metadata"].get("deletionTimestamp")]


def ready_condition(tgs: dict) -> dict:
    return next((c for c in tgs.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def serve_base_url(kubectl, tgs: dict) -> str:
    # status.url names the Serve Service (<name>-serve-svc.<ns>.svc:8000); the host reaches its ClusterIP through
    # kube-proxy's nftables rules, the same path pods take.
    host, port = tgs["status"]["url"].removeprefix("http://").rsplit(":", 1)
    svc = jget(kubectl, "service", host.split(".")[0], "-n", NAMESPACE)
    return f"http://{svc['spec']['clusterIP']}:{port}"


def generate_ok(base: str) -> dict | None:
    try:
        r = httpx.get(f"{base}/generate", params={"query": "Hello friend, how", "max_tokens": 8}, timeout=60)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def serve_replicas(kubectl, cluster: str) -> list[str]:
    """States of the model deployment's replicas, from the Ray dashboard (through the API server's proxy)."""
    raw = kubectl("get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/services/{cluster}-head-svc:dashboard/proxy"
                  "/api/serve/applications/", check=False)
    if raw.returncode != 0:
        return []
    app = json.loads(raw.stdout).get("applications", {}).get("textgen", {})
    return [r.get("state") for r in app.get("deployments", {}).get("GPT2Model", {}).get("replicas", [])]


def helm(kubeconfig: str, *args: str) -> str:
    proc = subprocess.run([str(ROOT / ".cache" / "bin" / "helm"), "--kubeconfig", kubeconfig, *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def helm_install(kubeconfig: str, operator_image: str) -> None:
    repo, tag = operator_image.rsplit(":", 1)
    helm(kubeconfig, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m",
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
         # Head (1 CPU) + worker (1 CPU) fill this 2-CPU node: the operator pod requests no CPU (limit unchanged).
         "--set", "resources.requests.cpu=0",
         # The chart's image policy (allowedImages) admits the locally built serve image (hack/node/images.sh).
         "--set-json", 'allowedImages=["localhost/textgen-serve:"]')


def applied(kubectl) -> list[dict]:
    """The RayService, once there; fails at once when the operator refused the spec (Degraded=True)."""
    tgs = jget(kubectl, "tgs", TGS, "-n", NAMESPACE)
    degraded = next((c for c in tgs.get("status", {}).get("conditions", []) if c["type"] == "Degraded"), {})
    assert degraded.get("status") != "True", f"the operator refused the TextGenService: {degraded}"
    return items(kubectl, "rayservices")


def leftovers_of_an_earlier_run(kubeconfig: str, kubectl) -> None:
    """A failed run kept with E2E_KEEP=1 leaves its release and namespace: remove them so that this run starts clean."""
    helm(kubeconfig, "uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found", "--wait")
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        kubectl("delete", "tgs", "--all", "-n", NAMESPACE, "--wait=true", timeout=300)
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", timeout=300)


def test_textgenservice_end_to_end_on_the_local_node(kubeconfig, kubectl, local_images, node_status):
    leftovers_of_an_earlier_run(kubeconfig, kubectl)
    t = Timings()
    node = jget(kubectl, "node", "textgen-node")
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "m5.4xlarge"
    # The guard that keeps pods' traffic on the node is in place (hack/node/hostnet.sh).
    guard = subprocess.run(["nft", "list", "table", "inet", "textgen-node"], capture_output=True, text=True).stdout
    assert 'iifname "textgen0" oifname != "textgen0"' in guard and "drop" in guard, guard

    # 1. helm install: the operator runs in a pod, from the local image, as the chart's ServiceAccount. Helm never
    # updates a CRD that exists (one an earlier run left): apply the chart's copy first, as users do on upgrades.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    # The namespace enforces the restricted Pod Security Standard: the operator's and the Ray pods must all pass.
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    helm_install(kubeconfig, local_images["OPERATOR_IMAGE"])
    (op_pod,) = items(kubectl, "pods", "-l", f"app.kubernetes.io/instance={RELEASE}")
    assert op_pod["status"]["phase"] == "Running"
    assert op_pod["spec"]["containers"][0]["image"] == local_images["OPERATOR_IMAGE"]
    assert op_pod["spec"]["nodeName"] == "textgen-node"
    sa = f"system:serviceaccount:{NAMESPACE}:{op_pod['spec']['serviceAccountName']}"
    can = lambda *a: kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
    assert can("patch", "textgenservices.textgen.dev", "-n", NAMESPACE) == "yes"
    assert can("create", "rayservices.ray.io", "-n", NAMESPACE) == "yes"
    assert can("create", "pods", "-n", NAMESPACE) == "no" and can("list", "secrets", "-n", NAMESPACE) == "no"
    assert can("get", "secrets", "-n", NAMESPACE) == "yes"  # by name: the Ray token KubeRay made for a cluster
    t.lap("helm install -> operator pod ready")

    # 2. apply -> RayService -> RayCluster -> head and worker Running -> Ready, READY == replicas, status.url.
    kubectl("apply", "-f", "-", input=tgs_manifest(local_images["SERVE_IMAGE"]))
    wait_for(lambda: applied(kubectl), "the RayService", timeout=120)
    t.lap("apply -> RayService")
    clusters = wait_for(lambda: items(kubectl, "rayclusters"), "the RayCluster", timeout=120)
    cluster = clusters[0]["metadata"]["name"]
    t.lap("-> RayCluster")
    wait_for(lambda: pod_phases(kubectl, "head") == ["Running"] and pod_phases(kubectl, "worker") == ["Running"],
             "head and worker pods Running", timeout=600, interval=2)
    t.lap("-> head and worker pods Running")
    tgs = wait_for(lambda: (lambda o: o if ready_condition(o).get("status") == "True" else None)(
        jget(kubectl, "tgs", TGS, "-n", NAMESPACE)), "TextGenService Ready=True", timeout=900, interval=3)
    t.lap("-> TextGenService Ready")
    assert tgs["status"]["readyReplicas"] == tgs["spec"]["replicas"] == 1
    header, row = kubectl("get", "tgs", TGS, "-n", NAMESPACE).stdout.splitlines()[:2]
    assert row[header.index("READY"):].split()[0] == "1", (header, row)  # the READY column equals replicas
    assert tgs["status"]["url"] == f"http://{TGS}-serve-svc.{NAMESPACE}.svc:8000"

    # 3. HTTP through the Serve Service: the seed's /generate, streaming /v1/completions, honest model name.
    base = serve_base_url(kubectl, tgs)
    first = wait_for(lambda: generate_ok(base), "the first 200 from /generate", timeout=300, interval=2)
    t.lap("-> first 200 from /generate")
    assert first[0]["generated_text"].startswith("Hello friend, how") and len(first[0]["generated_text"]) > 17
    models = httpx.get(f"{base}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [STAND_IN] and models["data"][0]["random_init"] is True
    # The serve image preloads Intel OpenMP (images/serve/Dockerfile): the model replica runs torch on it.
    assert httpx.get(f"{base}/stats", timeout=30).json()["openmp"] == "intel"
    with httpx.stream("POST", f"{base}/v1/completions", timeout=120,
                      json={"prompt": "Once upon a time", "max_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3, events
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {STAND_IN}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 8
    t.lap("completions stream checked")

    # Ray token auth on the real pods: the head's job API refuses a caller without KubeRay's token, takes it with it.
    # The NetworkPolicy is there and selects both pods, but this node's CNI (bridge) does not enforce policies.
    (head,) = items(kubectl, "pods", "-l", f"ray.io/cluster={cluster},ray.io/node-type=head")
    jobs = f"http://{head['status']['podIP']}:8265/api/jobs/"
    token = base64.b64decode(kubectl("get", "secret", cluster, "-n", NAMESPACE, "-o",
                                     "jsonpath={.data.auth_token}").stdout).decode()
    assert httpx.get(jobs, timeout=30).status_code == 401
    assert httpx.get(jobs, timeout=30, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(jobs, timeout=30, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    selector = jget(kubectl, "networkpolicy", f"{TGS}-ray", "-n", NAMESPACE)["spec"]["podSelector"]["matchLabels"]
    ray_pods = items(kubectl, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))
    assert {p["metadata"]["labels"]["ray.io/node-type"] for p in ray_pods} == {"head", "worker"}

    # 4. kubectl scale -> two model replicas serving, in the same RayCluster.
    kubectl("scale", f"tgs/{TGS}", "-n", NAMESPACE, "--replicas=2")
    wait_for(lambda: serve_replicas(kubectl, cluster).count("RUNNING") == 2, "two RUNNING model replicas",
             timeout=600, interval=3)
    wait_for(lambda: jget(kubectl, "tgs", TGS, "-n", NAMESPACE).get("status", {}).get("readyReplicas") == 2,
             "READY 2", timeout=120, interval=2)
    t.lap("scale to 2 -> two replicas running")
    assert [c["metadata"]["name"] for c in items(kubectl, "rayclusters")] == [cluster]
    assert generate_ok(base)
    print(node_status(), flush=True)  # memory of the node's processes and pods at two replicas

    # 5. Delete the Ray worker pod: the service comes back by itself.
    (worker,) = [p["metadata"]["name"] for p in items(kubectl, "pods", "-l", "ray.io/node-type=worker")]
    kubectl("delete", "pod", worker, "-n", NAMESPACE, "--wait=false")
    t.lap("worker pod deleted")
    wait_for(lambda: worker not in [p["metadata"]["name"] for p in items(kubectl, "pods", "-l", "ray.io/node-type=worker")]
             and pod_phases(kubectl, "worker") == ["Running"], "a new worker pod Running", timeout=600, interval=2)
    wait_for(lambda: generate_ok(base), "200 from /generate after the worker was replaced", timeout=600, interval=2)
    recovery = t.lap("worker pod deleted -> service answers again (recovery)")
    print(f"[e2e] recovery time after deleting the worker pod: {recovery} s", flush=True)
    assert [c["metadata"]["name"] for c in items(kubectl, "rayclusters")] == [cluster]

    # 6. Delete the TextGenService: everything it made goes (owner references, garbage collection).
    kubectl("delete", "tgs", TGS, "-n", NAMESPACE, "--wait=true", timeout=300)
    wait_for(lambda: not items(kubectl, "rayservices") and not items(kubectl, "rayclusters")
             and not items(kubectl, "pods", "-l", "ray.io/is-ray-node=yes"), "RayService, RayCluster and pods gone",
             timeout=300, interval=2)
    t.lap("delete tgs -> RayService, RayCluster, pods gone")
    helm(kubeconfig, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "3m")
    # Helm waits for the Deployment; its pod goes by garbage collection a little later.
    released = "all,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings"
    wait_for(lambda: not kubectl("get", released, "-A", "-l", f"app.kubernetes.io/instance={RELEASE}",
                                 "-o", "name").stdout.split(), "nothing of the release left", timeout=120, interval=2)
    assert not items(kubectl, "pods") and not items(kubectl, "tgs")
    assert kubectl("get", "crd", "textgenservices.textgen.dev", "-o", "name").stdout.strip()
    kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    t.lap("helm uninstall -> only the CRD left")

    out = ROOT / ".cache" / "e2e-local" / "timings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(t, indent=2) + "\n")
    print("[e2e] timings (s):", json.dumps(t, indent=2), flush=True)
