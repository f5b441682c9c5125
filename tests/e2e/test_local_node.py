"""End to end on a real local node (hack/node): Helm installs the operator as a pod from the locally built image, a
TextGenService becomes a RayService, a RayCluster and running Ray pods, and the Serve Service answers HTTP.

One test, in the order a user goes: each step asserts what it needs and records how long it took; the timings
are printed at the end and written to .cache/e2e-local/timings.json. `make e2e-local` runs it.
"""

from __future__ import annotations

import base64
import json
import subprocess

import httpx
import pytest

from tests.e2e import node_e2e as e2e
from tests.support import wait_for

TGS = "gpt2"

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(3600)]


def tgs_manifest(serve_image: str) -> str:
    # Sized for a 2-CPU node: head 1 CPU (Ray's head runs no replicas) + one worker of 1 CPU holding the ingress
    # (0.5 CPU) and up to two model replicas of 0.25 CPU. The operator pod asks for no CPU (see helm_install).
    # Memory admission (operator/textgen_operator/memory.py): 2 x (640 + 475 + 36 x 4 x 1.5) + 1024 MiB <= 5 GiB.
    return f"""
apiVersion: textgen.dev/v1alpha1
kind: TextGenService
metadata: {{name: {TGS}, namespace: {e2e.NAMESPACE}}}
spec:
  replicas: 1
  model: {{name: /models/{e2e.STAND_IN}}}
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


def test_textgenservice_end_to_end_on_the_local_node(kubeconfig, kubectl, local_images, node_status):
    e2e.leftovers_of_an_earlier_run(kubeconfig, kubectl)
    t = e2e.Timings()
    node = e2e.jget(kubectl, "node", "textgen-node")
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "m5.4xlarge"
    # The guard that keeps pods' traffic on the node is in place (hack/node/hostnet.sh).
    guard = subprocess.run(["nft", "list", "table", "inet", "textgen-node"], capture_output=True, text=True).stdout
    assert 'iifname "textgen0" oifname != "textgen0"' in guard and "drop" in guard, guard

    # 1. helm install: the operator runs in a pod, from the local image, as the chart's ServiceAccount. Helm never
    # updates a CRD that exists (one an earlier run left): apply the chart's copy first, as users do on upgrades.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(e2e.CHART / "crds"))
    e2e.restricted_namespace(kubectl)
    e2e.helm_install(kubeconfig, local_images["OPERATOR_IMAGE"])
    (op_pod,) = e2e.items(kubectl, "pods", "-l", f"app.kubernetes.io/instance={e2e.RELEASE}")
    assert op_pod["status"]["phase"] == "Running"
    assert op_pod["spec"]["containers"][0]["image"] == local_images["OPERATOR_IMAGE"]
    assert op_pod["spec"]["nodeName"] == "textgen-node"
    sa = f"system:serviceaccount:{e2e.NAMESPACE}:{op_pod['spec']['serviceAccountName']}"
    can = lambda *a: kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
    assert can("patch", "textgenservices.textgen.dev", "-n", e2e.NAMESPACE) == "yes"
    assert can("create", "rayservices.ray.io", "-n", e2e.NAMESPACE) == "yes"
    assert can("create", "pods", "-n", e2e.NAMESPACE) == "no" and can("list", "secrets", "-n", e2e.NAMESPACE) == "no"
    assert can("get", "secrets", "-n", e2e.NAMESPACE) == "yes"  # by name: the Ray token KubeRay made for a cluster
    t.lap("helm install -> operator pod ready")

    # 2. apply -> RayService -> RayCluster -> head and worker Running -> Ready, READY == replicas, status.url.
    kubectl("apply", "-f", "-", input=tgs_manifest(local_images["SERVE_IMAGE"]))
    wait_for(lambda: e2e.applied(kubectl, TGS), "the RayService", timeout=120)
    t.lap("apply -> RayService")
    clusters = wait_for(lambda: e2e.items(kubectl, "rayclusters"), "the RayCluster", timeout=120)
    cluster = clusters[0]["metadata"]["name"]
    t.lap("-> RayCluster")
    wait_for(lambda: e2e.pod_phases(kubectl, "head") == ["Running"] and e2e.pod_phases(kubectl, "worker") == ["Running"],
             "head and worker pods Running", timeout=600, interval=2)
    t.lap("-> head and worker pods Running")
    tgs = wait_for(lambda: (lambda o: o if e2e.ready_condition(o).get("status") == "True" else None)(
        e2e.get_tgs(kubectl, TGS)), "TextGenService Ready=True", timeout=900, interval=3)
    t.lap("-> TextGenService Ready")
    assert tgs["status"]["readyReplicas"] == tgs["spec"]["replicas"] == 1
    header, row = kubectl("get", "tgs", TGS, "-n", e2e.NAMESPACE).stdout.splitlines()[:2]
    assert row[header.index("READY"):].split()[0] == "1", (header, row)  # the READY column equals replicas
    assert tgs["status"]["url"] == f"http://{TGS}-serve-svc.{e2e.NAMESPACE}.svc:8000"

    # 3. HTTP through the Serve Service: the seed's /generate, streaming /v1/completions, honest model name.
    base = e2e.serve_base_url(kubectl, tgs)
    first = wait_for(lambda: e2e.generate_ok(base), "the first 200 from /generate", timeout=300, interval=2)
    t.lap("-> first 200 from /generate")
    assert first[0]["generated_text"].startswith("Hello friend, how") and len(first[0]["generated_text"]) > 17
    models = httpx.get(f"{base}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [e2e.STAND_IN] and models["data"][0]["random_init"] is True
    # The serve image preloads Intel OpenMP (images/serve/Dockerfile): the model replica runs torch on it.
    assert httpx.get(f"{base}/stats", timeout=30).json()["openmp"] == "intel"
    with httpx.stream("POST", f"{base}/v1/completions", timeout=120,
                      json={"prompt": "Once upon a time", "max_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3, events
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {e2e.STAND_IN}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 8
    t.lap("completions stream checked")

    # Ray token auth on the real pods: the head's job API refuses a caller without KubeRay's token, takes it with it.
    # The NetworkPolicy is there and selects both pods, but this node's CNI (bridge) does not enforce policies.
    (head,) = e2e.items(kubectl, "pods", "-l", f"ray.io/cluster={cluster},ray.io/node-type=head")
    jobs = f"http://{head['status']['podIP']}:8265/api/jobs/"
    token = base64.b64decode(kubectl("get", "secret", cluster, "-n", e2e.NAMESPACE, "-o",
                                     "jsonpath={.data.auth_token}").stdout).decode()
    assert httpx.get(jobs, timeout=30).status_code == 401
    assert httpx.get(jobs, timeout=30, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(jobs, timeout=30, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    selector = e2e.jget(kubectl, "networkpolicy", f"{TGS}-ray", "-n", e2e.NAMESPACE)["spec"]["podSelector"]["matchLabels"]
    ray_pods = e2e.items(kubectl, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))
    assert {p["metadata"]["labels"]["ray.io/node-type"] for p in ray_pods} == {"head", "worker"}

    # 4. kubectl scale -> two model replicas serving, in the same RayCluster.
    kubectl("scale", f"tgs/{TGS}", "-n", e2e.NAMESPACE, "--replicas=2")
    wait_for(lambda: e2e.serve_replicas(kubectl, cluster).count("RUNNING") == 2, "two RUNNING model replicas",
             timeout=600, interval=3)
    wait_for(lambda: e2e.get_tgs(kubectl, TGS).get("status", {}).get("readyReplicas") == 2,
             "READY 2", timeout=120, interval=2)
    t.lap("scale to 2 -> two replicas running")
    assert [c["metadata"]["name"] for c in e2e.items(kubectl, "rayclusters")] == [cluster]
    assert e2e.generate_ok(base)
    print(node_status(), flush=True)  # memory of the node's processes and pods at two replicas

    # 5. Delete the Ray worker pod: the service comes back by itself.
    (worker,) = [p["metadata"]["name"] for p in e2e.items(kubectl, "pods", "-l", "ray.io/node-type=worker")]
    kubectl("delete", "pod", worker, "-n", e2e.NAMESPACE, "--wait=false")
    t.lap("worker pod deleted")
    wait_for(lambda: worker not in [p["metadata"]["name"] for p in e2e.items(kubectl, "pods", "-l", "ray.io/node-type=worker")]
             and e2e.pod_phases(kubectl, "worker") == ["Running"], "a new worker pod Running", timeout=600, interval=2)
    wait_for(lambda: e2e.generate_ok(base), "200 from /generate after the worker was replaced", timeout=600, interval=2)
    recovery = t.lap("worker pod deleted -> service answers again (recovery)")
    print(f"[e2e] recovery time after deleting the worker pod: {recovery} s", flush=True)
    assert [c["metadata"]["name"] for c in e2e.items(kubectl, "rayclusters")] == [cluster]

    # 6. Delete the TextGenService: everything it made goes (owner references, garbage collection).
    kubectl("delete", "tgs", TGS, "-n", e2e.NAMESPACE, "--wait=true", timeout=300)
    wait_for(lambda: not e2e.items(kubectl, "rayservices") and not e2e.items(kubectl, "rayclusters")
             and not e2e.items(kubectl, "pods", "-l", "ray.io/is-ray-node=yes"), "RayService, RayCluster and pods gone",
             timeout=300, interval=2)
    t.lap("delete tgs -> RayService, RayCluster, pods gone")
    e2e.helm(kubeconfig, "uninstall", e2e.RELEASE, "-n", e2e.NAMESPACE, "--wait", "--timeout", "3m")
    # Helm waits for the Deployment; its pod goes by garbage collection a little later.
    released = "all,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings"
    wait_for(lambda: not kubectl("get", released, "-A", "-l", f"app.kubernetes.io/instance={e2e.RELEASE}",
                                 "-o", "name").stdout.split(), "nothing of the release left", timeout=120, interval=2)
    assert not e2e.items(kubectl, "pods") and not e2e.items(kubectl, "tgs")
    assert kubectl("get", "crd", "textgenservices.textgen.dev", "-o", "name").stdout.strip()
    kubectl("delete", "namespace", e2e.NAMESPACE, "--wait=false")
    t.lap("helm uninstall -> only the CRD left")

    out = e2e.ROOT / ".cache" / "e2e-local" / "timings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(t, indent=2) + "\n")
    print("[e2e] timings (s):", json.dumps(t, indent=2), flush=True)
