"""The seed's scale on simulated nodes: 8 m5.4xlarge workers (+1 for the head), the real KubeRay operator, the real
kube-scheduler and kwok (tests/sim/conftest.py). Pods are real API objects scheduled by the real scheduler; kwok only
plays the kubelet (marks them Running/Ready, deletes them when asked). Step times are printed, never asserted.
"""

from __future__ import annotations

import math
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from textgen_operator import constants as C
from textgen_operator import handlers, memory
from textgen_operator.builder import worker_bounds
from textgen_operator.constants import INGRESS_CPUS, NODE_TYPES
from textgen_operator.validation import validate

from tests.operator.tgs_common import load_sample
from tests.sim.sim_nodes import NODE, SIM_NODES, WORKER_NODES, SimNode, reserved_millicpu
from tests.support import wait_for


def report(capsys, line: str) -> None:
    with capsys.disabled():  # shown in `make test` too, not only with -s
        print(f"\n[sim-scale] {line}", flush=True)


def rayclusters(api, ns: str) -> list[dict]:
    return api.list_namespaced_custom_object(C.RAY_GROUP, "v1", ns, C.RAYCLUSTER_PLURAL)["items"]


def pods_of(core, ns: str, cluster: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"ray.io/cluster={cluster}").items


def placement(core, ns: str, cluster: str, workers: int) -> dict | None:
    """{'head': node, 'workers': [nodes]} once exactly `workers` worker pods and the head are Running and Ready on
    nodes, nothing is Pending or terminating; else None."""
    pods = pods_of(core, ns, cluster)
    if any(p.metadata.deletion_timestamp or p.status.phase != "Running" or not p.spec.node_name for p in pods):
        return None
    if not all(any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) for p in pods):
        return None
    kinds = [p.metadata.labels.get("ray.io/node-type") for p in pods]
    if kinds.count("head") != 1 or kinds.count("worker") != workers:
        return None
    nodes = {k: [p.spec.node_name for p in pods if p.metadata.labels.get("ray.io/node-type") == k]
             for k in ("head", "worker")}
    return {"head": nodes["head"][0], "workers": nodes["worker"]}


def ready_workers(api, ns: str, name: str) -> int | None:
    rc = api.get_namespaced_custom_object(C.RAY_GROUP, "v1", ns, C.RAYCLUSTER_PLURAL, name)
    return (rc.get("status") or {}).get("readyWorkerReplicas")


def converge(api, core, ns: str, cluster: str, workers: int, what: str, timeout: float = 120) -> tuple[dict, float]:
    t0 = time.monotonic()
    placed = wait_for(lambda: placement(core, ns, cluster, workers), what, timeout=timeout)
    wait_for(lambda: ready_workers(api, ns, cluster) == workers, f"RayCluster status: {workers} ready workers",
             timeout=60)
    return placed, time.monotonic() - t0


def check_one_per_node(placed: dict, sim: list[str]) -> None:
    nodes = placed["workers"] + [placed["head"]]
    assert len(set(nodes)) == len(nodes), f"two Ray pods share a node: {placed}"
    assert set(nodes) <= set(sim)


@pytest.mark.cluster
def test_seed_scale_fixed_follows_1_8_2_nodes(sim, sim_ns, api, k8s_api, kubectl, run_operator, capsys):
    ns, core = sim_ns, client.CoreV1Api(k8s_api)
    doc = load_sample("seed-scale")
    name, spec = doc["metadata"]["name"], validate(doc["metadata"]["name"], doc["spec"])
    per_node = spec.cluster.replicas_per_node
    # the derived worker bounds are the nodes the seed needs: 56 replicas / 7 per m5.4xlarge = 8
    assert worker_bounds(spec) == (WORKER_NODES,) * 3 == (math.ceil(spec.replicas / per_node),) * 3
    with run_operator() as log:
        t0 = time.monotonic()
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, doc)
        (rc,) = wait_for(lambda: rayclusters(api, ns), "the RayCluster")
        cluster, uid = rc["metadata"]["name"], rc["metadata"]["uid"]
        placed, _ = converge(api, core, ns, cluster, WORKER_NODES, f"{WORKER_NODES} workers + head placed")
        report(capsys, f"create {name} -> {WORKER_NODES} nodes: {time.monotonic() - t0:.1f} s "
                       f"({SIM_NODES} pods on {SIM_NODES} nodes)")
        check_one_per_node(placed, sim)
        assert len(placed["workers"]) + 1 == SIM_NODES

        nodes_now = WORKER_NODES
        for nodes in (1, WORKER_NODES, 2):
            replicas = nodes * per_node
            t0 = time.monotonic()
            kubectl("scale", "tgs", name, f"--replicas={replicas}", "-n", ns)
            placed, _ = converge(api, core, ns, cluster, nodes, f"{nodes} worker(s) after scaling to {replicas}")
            report(capsys, f"scale {nodes_now} -> {nodes} nodes ({replicas} replicas): {time.monotonic() - t0:.1f} s")
            check_one_per_node(placed, sim)
            # never replaced: the same RayCluster, the only one
            assert [(c["metadata"]["name"], c["metadata"]["uid"]) for c in rayclusters(api, ns)] == [(cluster, uid)]
            wait_for(lambda: (api.get_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, name).get("status")
                              or {}).get("replicas") == replicas, f"TextGenService status.replicas = {replicas}")
            group = api.get_namespaced_custom_object(C.RAY_GROUP, "v1", ns, C.RAYCLUSTER_PLURAL,
                                                     cluster)["spec"]["workerGroupSpecs"][0]
            assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (nodes,) * 3
            nodes_now = nodes
        assert log.count("resized to") >= 3


@pytest.mark.cluster
def test_more_workers_than_nodes_are_reported_with_the_schedulers_words(sim, sim_ns, api, k8s_api, kubectl,
                                                                      run_operator, capsys):
    """A valid spec the cluster is too small for: 63 replicas = 9 workers, plus the head, on 9 nodes."""
    ns, core = sim_ns, client.CoreV1Api(k8s_api)
    doc = load_sample("seed-scale")
    doc["spec"]["replicas"] = (WORKER_NODES + 1) * 7
    name = doc["metadata"]["name"]
    with run_operator():
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, doc)

        def progressing():
            tgs = api.get_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, name)
            cond = {c["type"]: c for c in (tgs.get("status") or {}).get("conditions") or []}.get("Progressing") or {}
            return cond if cond.get("reason") == "ClusterUnschedulable" else None  # a first cluster: none serves yet

        cond = wait_for(progressing, "Progressing=False/ClusterUnschedulable", timeout=90)
    assert cond["status"] == "False" and "Insufficient cpu" in cond["message"], cond
    pending = [p.metadata.name for p in core.list_namespaced_pod(ns).items if p.status.phase == "Pending"]
    assert len(pending) == 1 and pending[0] in cond["message"], (pending, cond["message"])
    report(capsys, f"9 workers for 8 free nodes -> Progressing=False: {cond['message']}")


def drive_workers(api, core, ns: str, cluster: str, target: int) -> None:
    """What Ray's autoscaler does: set the worker group's replicas, naming the pods to remove when scaling down."""
    workers = [p.metadata.name for p in pods_of(core, ns, cluster)
               if p.metadata.labels.get("ray.io/node-type") == "worker" and not p.metadata.deletion_timestamp]
    doomed = sorted(workers)[: max(0, len(workers) - target)]
    patch = [{"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": C.WORKER_GROUP},
             {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": target},
             {"op": "add", "path": "/spec/workerGroupSpecs/0/scaleStrategy", "value": {"workersToDelete": doomed}}]
    api.patch_namespaced_custom_object(C.RAY_GROUP, "v1", ns, C.RAYCLUSTER_PLURAL, cluster, patch,
                                       _content_type="application/json-patch+json")


@pytest.mark.cluster
def test_seed_autoscaling_worker_group_driven_within_1_to_8(sim, sim_ns, api, k8s_api, kubectl, run_operator,
                                                           capsys, monkeypatch):
    # the operator's repair loop every second, counted, so the test sees it leave the autoscaler's field alone
    repairs = []
    real_repair = handlers.repair
    monkeypatch.setattr(handlers, "REPAIR_INTERVAL_S", 1)
    monkeypatch.setattr(handlers, "repair", lambda *a: (repairs.append(a[:2]), real_repair(*a)))
    ns, core = sim_ns, client.CoreV1Api(k8s_api)
    doc = load_sample("seed-scale-autoscaling")
    name, spec = doc["metadata"]["name"], validate(doc["metadata"]["name"], doc["spec"])
    start, lo, hi = worker_bounds(spec)
    assert (lo, hi) == (1, WORKER_NODES), "max = the seed's 8 nodes"
    with run_operator() as log:
        t0 = time.monotonic()
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, doc)
        (rc,) = wait_for(lambda: rayclusters(api, ns), "the RayCluster")
        cluster, uid = rc["metadata"]["name"], rc["metadata"]["uid"]
        group = rc["spec"]["workerGroupSpecs"][0]
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (start, lo, hi)
        assert rc["spec"]["enableInTreeAutoscaling"] is True
        placed, _ = converge(api, core, ns, cluster, start, f"{start} workers + head placed")
        report(capsys, f"create {name} -> {start} nodes: {time.monotonic() - t0:.1f} s")
        check_one_per_node(placed, sim)

        now = start
        for target in (hi, 3, lo):
            t0 = time.monotonic()
            drive_workers(api, core, ns, cluster, target)
            placed, _ = converge(api, core, ns, cluster, target, f"{target} worker(s) after the autoscaler's patch")
            report(capsys, f"autoscaler {now} -> {target} nodes: {time.monotonic() - t0:.1f} s")
            check_one_per_node(placed, sim)
            assert [(c["metadata"]["name"], c["metadata"]["uid"]) for c in rayclusters(api, ns)] == [(cluster, uid)]
            now = target
        # the operator left the autoscaler's field alone: its repair loop ran since
        seen = len(repairs)
        wait_for(lambda: len(repairs) >= seen + 2, "two more rounds of the operator's repair loop", timeout=30)
        rc = api.get_namespaced_custom_object(C.RAY_GROUP, "v1", ns, C.RAYCLUSTER_PLURAL, cluster)
        assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == lo
        assert log.count("resized to") == 0


# --- specs that cannot fit are refused before any pod exists ------------------------------------------------------

GIB = 1024
UNFIT = {  # spec, why it could never be scheduled on the simulated m5.4xlarge, the API server's message
    "worker-cpus": ({"cluster": {"worker": {"cpus": 16}}}, 16000 > NODE.allocatable_millicpu,
                    "cluster.worker.cpus must fit the node type"),
    "worker-memory": ({"cluster": {"worker": {"memoryGi": 62}}}, 62 * GIB > NODE.allocatable_mib,
                      "cluster.worker.memoryGi must fit the node type"),
    "head-cpus": ({"cluster": {"head": {"cpus": 16}}}, 16000 > NODE.allocatable_millicpu,
                  "cluster.head.cpus must fit the node type"),
    "replica-cpus": ({"cluster": {"cpusPerReplica": 15}}, 15000 + INGRESS_CPUS * 1000 > 15000,
                     "cluster.cpusPerReplica plus 0.5 CPU for the HTTP ingress must fit in one worker pod"),
    # replicas per node x per-replica memory: 7 replicas, each with a KV cache for 128 full sequences, in 56 GiB
    "replicas-memory": ({"serving": {"maxBatchSize": 128, "maxOngoingRequests": 128}},
                        not memory.fits(model="gpt2", max_batch_size=128, replicas_on_node=7, worker_memory_gi=56),
                        memory.MESSAGE[:60]),
}


@pytest.mark.cluster
def test_specs_that_cannot_fit_are_refused_before_any_pod(sim, sim_ns, api, k8s_api, kubectl, crd_installed):
    ns, core = sim_ns, client.CoreV1Api(k8s_api)
    for case, (spec, unschedulable, message) in UNFIT.items():
        assert unschedulable, case
        body = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": f"unfit-{case}"},
                "spec": {"replicas": 7, **spec}}
        with pytest.raises(ApiException) as err:
            api.create_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL, body)
        assert err.value.status == 422 and message in err.value.body, (case, err.value.body)
    assert api.list_namespaced_custom_object(C.GROUP, C.VERSION, ns, C.PLURAL)["items"] == []
    assert core.list_namespaced_pod(ns).items == []

    # what admission spared us: a pod shaped like the refused 16-CPU worker, made directly, is never scheduled
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="worker-16-cpus"),
        spec=client.V1PodSpec(node_selector={C.NODE_TYPE_LABEL: NODE.instance_type}, containers=[client.V1Container(
            name="ray-worker", image="textgen-serve:never-pulled",
            resources=client.V1ResourceRequirements(requests={"cpu": "16", "memory": "56Gi"}))]))
    core.create_namespaced_pod(ns, pod)

    def unschedulable():
        p = core.read_namespaced_pod("worker-16-cpus", ns)
        cond = next((c for c in p.status.conditions or [] if c.type == "PodScheduled"), None)
        return cond is not None and cond.reason == "Unschedulable" and cond.message

    message = wait_for(unschedulable, "the scheduler's verdict on a 16-CPU pod", timeout=60)
    assert "Insufficient cpu" in message and core.read_namespaced_pod("worker-16-cpus", ns).status.phase == "Pending"


def test_eks_reserve_of_an_m5_4xlarge():
    assert reserved_millicpu(16) == 110 and NODE.allocatable_millicpu == 15890
    assert NODE.reserved_mib == 255 + 11 * 234 + 100 and NODE.allocatable_mib == 64 * 1024 - 2929


@pytest.mark.parametrize("node_type", list(NODE_TYPES))
def test_what_admission_allows_fits_the_node_after_its_reserve(node_type):
    """The CRD's per-node-type limits (vCPUs - 1, 7/8 of memory) are within what an EKS node really offers: a spec the
    API server admits never asks for a pod no node of its type can hold."""
    admitted, real = NODE_TYPES[node_type], SimNode.of(node_type)
    assert admitted.allocatable_cpus * 1000 <= real.allocatable_millicpu
    assert admitted.allocatable_memory_gib * GIB <= real.allocatable_mib
    # and the worker pod at that size leaves too little for a second one or a default head (2 CPUs) beside it
    assert admitted.allocatable_cpus * 1000 + 2000 > real.allocatable_millicpu
