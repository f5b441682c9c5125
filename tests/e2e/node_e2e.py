"""What the end-to-end tests on the local node (hack/node) share: the namespace and release they use, kubectl and
helm helpers, the HTTP probe of the Serve Service and Serve's own view of its replicas."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "textgen-operator"
NAMESPACE = "textgen-e2e"
RELEASE = "textgen-operator"
STAND_IN = "gpt2-random-init"  # the model `make model` builds, baked into the serve image by hack/node/images.sh


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


def ray_token(kubectl, cluster: str) -> str | None:
    """The Ray auth token of RayCluster `cluster` (KubeRay's Secret named after the cluster), None without auth."""
    raw = kubectl("get", "secret", cluster, "-n", NAMESPACE, "-o", "jsonpath={.data.auth_token}", check=False)
    return base64.b64decode(raw.stdout).decode() if raw.returncode == 0 and raw.stdout.strip() else None


def serve_app(kubectl, cluster: str) -> dict:
    """The serve app as Ray's dashboard on the head pod reports it (GET /api/serve/applications/, with the cluster's
    bearer token when Ray auth is on); {} while the dashboard does not answer."""
    heads = items(kubectl, "pods", "-l", f"ray.io/cluster={cluster},ray.io/node-type=head")
    ip = heads[0].get("status", {}).get("podIP") if heads else None
    if not ip:
        return {}
    token = ray_token(kubectl, cluster)
    try:
        r = httpx.get(f"http://{ip}:8265/api/serve/applications/", timeout=10,
                      headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError:
        return {}
    return r.json().get("applications", {}).get("textgen", {}) if r.status_code == 200 else {}


def serve_replicas(kubectl, cluster: str) -> list[str]:
    """States of the model deployment's replicas, from the Ray dashboard."""
    app = serve_app(kubectl, cluster)
    return [r.get("state") for r in app.get("deployments", {}).get("GPT2Model", {}).get("replicas", [])]


def restricted_namespace(kubectl) -> None:
    """The test namespace, enforcing the restricted Pod Security Standard: the operator's and the Ray pods must pass."""
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")


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


def get_tgs(kubectl, name: str) -> dict:
    return jget(kubectl, "tgs", name, "-n", NAMESPACE)


def applied(kubectl, name: str) -> list[dict]:
    """The RayService, once there; fails at once when the operator refused the spec (Degraded=True)."""
    tgs = get_tgs(kubectl, name)
    degraded = next((c for c in tgs.get("status", {}).get("conditions", []) if c["type"] == "Degraded"), {})
    assert degraded.get("status") != "True", f"the operator refused the TextGenService: {degraded}"
    return items(kubectl, "rayservices")


def leftovers_of_an_earlier_run(kubeconfig: str, kubectl) -> None:
    """A failed run kept with E2E_KEEP=1 leaves its release and namespace: remove them so that this run starts clean."""
    helm(kubeconfig, "uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found", "--wait")
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        kubectl("delete", "tgs", "--all", "-n", NAMESPACE, "--wait=true", timeout=300)
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", timeout=300)
