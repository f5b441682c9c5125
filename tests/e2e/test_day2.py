"""Day-2 operations on the real local node (hack/node), in one TextGenService's life: READY counts what Serve runs,
a change applied in place under load, scale to zero and the cold start back, a change that needs a new Ray cluster
under load. `make e2e-day2` runs this alone; `make e2e-local` (and so `make test`) runs it with the rest of tests/e2e.

The node has 2 CPUs: head 1 + one worker 1. So the worker holds up to four model replicas of 0.25 CPU (the ingress
runs on the head when minReplicas is 0), and there is no room for a second cluster: a NewCluster upgrade must say
which of its pods cannot be scheduled, while the old cluster keeps serving. Figures are printed and written to
.cache/e2e-local/day2.json.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.e2e import node_e2e as e2e
from tests.support import wait_for

TGS = "gpt2-day2"
CLIENTS = 6  # concurrent clients during the changes: 4-8, bounded, on loopback

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(3600)]


def manifest(serve_image: str, *, replicas: int = 1, max_tokens_limit: int = 64, downscale_delay_s: int = 600,
             head_memory_gi: int = 3) -> str:
    # Memory admission counts two replicas per worker (its CPU minus the ingress's 0.5, on workers when not scaling
    # to zero); three fit in 5 GiB all the same: 3 x (640 + 475 + 36 x 4 x 1.5) + 1024 MiB = 4.9 GiB.
    return f"""
apiVersion: textgen.dev/v1alpha1
kind: TextGenService
metadata: {{name: {TGS}, namespace: {e2e.NAMESPACE}}}
spec:
  replicas: {replicas}
  autoscaling:
    minReplicas: 0
    maxReplicas: 3
    targetOngoingRequests: 2
    upscaleDelayS: 5
    downscaleDelayS: {downscale_delay_s}
    lookBackPeriodS: 10
    nodeIdleTimeoutS: 30
  model: {{name: /models/{e2e.STAND_IN}}}
  serving: {{maxBatchSize: 4, defaultMaxTokens: 16, maxTokensLimit: {max_tokens_limit}, dtype: float32}}
  cluster:
    image: {serve_image}
    imagePullPolicy: Never
    nodeType: m5.4xlarge
    cpusPerReplica: 0.25
    upgradeStrategy: NewCluster
    head: {{cpus: 1, memoryGi: {head_memory_gi}}}
    worker: {{cpus: 1, memoryGi: 5}}
"""


class Load:
    """CLIENTS threads, each sending one /generate after the other until stopped; counts every answer but a 200
    (an error status, a timeout, a refused connection) as a failed request."""

    def __init__(self, base: str):
        self.base, self.ok, self.failed, self.errors = base, 0, 0, []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=300) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(f"{self.base}/generate", params={"query": f"Client {i} says", "max_tokens": 8})
                    error = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    error = repr(exc)
                with self._lock:
                    if error:
                        self.failed += 1
                        self.errors.append(error)
                    else:
                        self.ok += 1

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(330)

    @property
    def total(self) -> int:
        return self.ok + self.failed


def condition(tgs: dict, type_: str) -> dict:
    return next((c for c in tgs.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def not_degraded(kubectl) -> dict:
    tgs = e2e.get_tgs(kubectl, TGS)
    assert condition(tgs, "Degraded").get("status") != "True", condition(tgs, "Degraded")
    return tgs


def test_day2_on_the_local_node(kubeconfig, kubectl, local_images):
    e2e.leftovers_of_an_earlier_run(kubeconfig, kubectl)
    t, figures = e2e.Timings(), {}
    image = local_images["SERVE_IMAGE"]
    e2e.restricted_namespace(kubectl)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(e2e.ROOT / "charts" / "textgen-operator" / "crds"))
    e2e.helm_install(kubeconfig, local_images["OPERATOR_IMAGE"])
    kubectl("apply", "-f", "-", input=manifest(image))
    wait_for(lambda: e2e.applied(kubectl, TGS), "the RayService", timeout=120)
    wait_for(lambda: e2e.pod_phases(kubectl, "head") == ["Running"] and e2e.pod_phases(kubectl, "worker") == ["Running"],
             "head and worker pods Running", timeout=600, interval=2)
    tgs = wait_for(lambda: (lambda o: o if e2e.ready_condition(o).get("status") == "True" else None)(
        e2e.get_tgs(kubectl, TGS)), "TextGenService Ready=True", timeout=900, interval=3)
    base = e2e.serve_base_url(kubectl, tgs)
    wait_for(lambda: e2e.generate_ok(base), "the first 200 from /generate", timeout=300, interval=2)
    (cluster,) = [c["metadata"]["name"] for c in e2e.items(kubectl, "rayclusters")]
    wait_for(lambda: e2e.get_tgs(kubectl, TGS)["status"].get("readyReplicas") == 1, "READY 1", timeout=120, interval=2)
    t.lap("apply -> serving with one replica")

    # 1. READY counts what Serve runs: never more than Serve's RUNNING replicas, read after it.
    kubectl("scale", f"tgs/{TGS}", "-n", e2e.NAMESPACE, "--replicas=3")
    seen = []

    def three_of_three() -> bool:
        ready = e2e.get_tgs(kubectl, TGS)["status"].get("readyReplicas")
        app = e2e.serve_app(kubectl, cluster)  # after READY was read: Serve's count only grows while scaling up
        if not app:
            return False  # the dashboard did not answer this time
        states = [r.get("state") for r in app["deployments"]["GPT2Model"]["replicas"]]
        assert ready is None or ready <= states.count("RUNNING"), f"READY {ready} but Serve runs {states}"
        if not seen or seen[-1] != ready:
            seen.append(ready)
        return ready == 3 and states.count("RUNNING") == 3

    wait_for(three_of_three, "READY 3 with three RUNNING replicas", timeout=600, interval=1)
    figures["ready_3_of_3_s"] = t.lap("kubectl scale --replicas=3 -> READY 3/3")
    print(f"time to 3/3: {figures['ready_3_of_3_s']} s (READY went {' -> '.join(map(str, seen))})", flush=True)
    assert [c["metadata"]["name"] for c in e2e.items(kubectl, "rayclusters")] == [cluster]

    # 2. In-place changes under load, in the same RayCluster. (replicas=3: what `kubectl scale` set.)
    # a) The autoscaler's settings: Serve applies them to the running replicas.
    def settled(app: dict, check) -> bool:
        return app.get("status") == "RUNNING" and check(app.get("deployed_app_config") or {}) and all(
            r.get("state") == "RUNNING" for d in app.get("deployments", {}).values() for r in d.get("replicas", []))

    def model_config(config: dict) -> dict:
        return next((d for d in config.get("deployments", []) if d.get("name") == "GPT2Model"), {})

    with Load(base) as load:
        time.sleep(10)
        kubectl("apply", "-f", "-", input=manifest(image, replicas=3, downscale_delay_s=20))
        wait_for(lambda: settled(e2e.serve_app(kubectl, cluster), lambda c: model_config(c).get(
            "autoscaling_config", {}).get("downscale_delay_s") == 20), "the new autoscaling settings in Serve",
            timeout=300, interval=2)
        time.sleep(10)
    print(f"failed requests during an in-place change: {load.failed} of {load.total}", flush=True)
    figures["in_place"] = {"failed": load.failed, "total": load.total}
    t.lap("in-place change (autoscaling settings) under load")
    assert load.failed == 0, load.errors[:5]
    assert load.total > CLIENTS

    # b) Serving limits are the app's arguments: Serve replaces every replica (and the ingress).
    with Load(base) as load:
        time.sleep(10)
        kubectl("apply", "-f", "-", input=manifest(image, replicas=3, max_tokens_limit=96, downscale_delay_s=20))
        wait_for(lambda: settled(e2e.serve_app(kubectl, cluster), lambda c: c.get("args", {}).get("max_tokens_limit")
                                 == 96), "the new serving limits RUNNING in Serve", timeout=600, interval=2)
        time.sleep(10)
    print(f"failed requests during an in-place change that replaces the replicas (serving limits): {load.failed} "
          f"of {load.total}", flush=True)
    figures["in_place_replacing_replicas"] = {"failed": load.failed, "total": load.total}
    t.lap("in-place change (serving limits) under load")
    assert load.failed == 0, load.errors[:5]
    assert load.total > CLIENTS
    assert [c["metadata"]["name"] for c in e2e.items(kubectl, "rayclusters")] == [cluster]
    r = httpx.get(f"{base}/generate", params={"query": "Hello", "max_tokens": 80}, timeout=120)
    assert r.status_code == 200, r.text  # above the old limit of 64: the new arguments serve

    # 3. Scale to zero: idle -> no model replica, then KubeRay's autoscaler removes the idle worker; the head stays.
    wait_for(lambda: not_degraded(kubectl)["status"].get("readyReplicas") == 0
             and condition(e2e.get_tgs(kubectl, TGS), "Ready").get("reason") == "ScaledToZero",
             "READY 0 and Ready reason ScaledToZero", timeout=600, interval=3)
    t.lap("idle -> scaled to zero")
    wait_for(lambda: e2e.serve_replicas(kubectl, cluster) == [], "the last replica stopped", timeout=120, interval=2)
    wait_for(lambda: not_degraded(kubectl) and e2e.pod_phases(kubectl, "worker") == []
             and e2e.pod_phases(kubectl, "head") == ["Running"], "the idle worker pod removed", timeout=600, interval=3)
    figures["zero_to_worker_gone_s"] = t.lap("-> worker pod removed (head stays)")
    tgs = e2e.get_tgs(kubectl, TGS)
    assert condition(tgs, "Ready")["status"] == "True" and condition(tgs, "Degraded")["status"] == "False", tgs

    # The next request is held by the head's proxy while a worker and a replica come back, then answered.
    t0 = time.monotonic()
    r = httpx.get(f"{base}/generate", params={"query": "Cold start", "max_tokens": 8}, timeout=600)
    figures["cold_start_s"] = round(time.monotonic() - t0, 1)
    assert r.status_code == 200, r.text
    print(f"cold start from zero: {figures['cold_start_s']} s", flush=True)
    t.lap("cold start")
    assert e2e.pod_phases(kubectl, "worker") == ["Running"]

    # 4. A change that needs a new cluster (the head's memory) under load. No room for two clusters on this node:
    # the TextGenService names the pods that cannot be scheduled, and the old cluster keeps serving.
    with Load(base) as load:
        time.sleep(5)
        kubectl("apply", "-f", "-", input=manifest(image, replicas=3, max_tokens_limit=96,
                                                   downscale_delay_s=20, head_memory_gi=2))
        tgs = wait_for(lambda: (lambda o: o if condition(o, "Progressing").get("reason") == "NewClusterUnschedulable"
                                else None)(e2e.get_tgs(kubectl, TGS)), "Progressing: NewClusterUnschedulable",
                       timeout=300, interval=2)
        time.sleep(15)
    message = condition(tgs, "Progressing")["message"]
    print(f"failed requests during a new-cluster change: {load.failed} of {load.total}", flush=True)
    print(f"(the new cluster could not be scheduled on this 2-CPU node; status said: {message})", flush=True)
    figures["new_cluster"] = {"failed": load.failed, "total": load.total, "status": message}
    t.lap("new-cluster change under load")
    assert load.failed == 0, load.errors[:5]
    assert load.total > CLIENTS
    assert "Insufficient cpu" in message and "head" in message, message
    assert condition(tgs, "Ready")["status"] == "True" and condition(tgs, "Degraded")["status"] == "False", tgs
    assert len(e2e.items(kubectl, "rayclusters")) == 2

    # Delete: both clusters and every pod go with the TextGenService.
    kubectl("delete", "tgs", TGS, "-n", e2e.NAMESPACE, "--wait=true", timeout=300)
    wait_for(lambda: not e2e.items(kubectl, "rayclusters") and not e2e.items(kubectl, "pods", "-l", "ray.io/is-ray-node=yes"),
             "RayClusters and pods gone", timeout=300, interval=2)
    e2e.helm(kubeconfig, "uninstall", e2e.RELEASE, "-n", e2e.NAMESPACE, "--wait", "--timeout", "3m")
    kubectl("delete", "namespace", e2e.NAMESPACE, "--wait=true", timeout=300)
    t.lap("delete tgs, helm uninstall, namespace")

    out = e2e.ROOT / ".cache" / "e2e-local" / "day2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"timings_s": t, "figures": figures}, indent=2) + "\n")
    print("[e2e] day-2 figures:", json.dumps(figures, indent=2), flush=True)
