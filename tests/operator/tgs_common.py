"""Shared helpers for the operator tests (and tests/sim): paths, samples, rule cases, cluster calls, KubeRay's pods.
Imported as tests.operator.tgs_common (a subpackage of `tests`, so it shadows no standard `operator` module)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from kubernetes.client.exceptions import ApiException
from textgen_operator import constants as C
from textgen_operator.builder import build_rayservice

ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = ROOT / "manifests" / "samples"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))
CRD_PATH = ROOT / "manifests" / "crd" / C.CRD_FILENAME


# (spec, the message the operator and the API server both give)
RULE_CASES = {
    "min<=max": ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                 "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    "replicas-in-bounds": ({"replicas": 9, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
                           "replicas must be within [autoscaling.minReplicas, autoscaling.maxReplicas] when "
                           "autoscaling is on"),
    "default<=limit": ({"serving": {"maxTokensLimit": 32, "defaultMaxTokens": 64}},
                       "serving.defaultMaxTokens must be less than or equal to serving.maxTokensLimit"),
    "ongoing>=batch": ({"serving": {"maxBatchSize": 64, "maxOngoingRequests": 8}},
                       "serving.maxOngoingRequests must be at least serving.maxBatchSize"),
    "cpus-per-replica-fit": ({"cluster": {"nodeType": "m5.xlarge", "cpusPerReplica": 3}},
                             "cluster.cpusPerReplica plus 0.5 CPU for the HTTP ingress must fit in one worker pod"),
    "cpus-per-replica-vs-worker": ({"cluster": {"cpusPerReplica": 4, "worker": {"cpus": 4}}},
                                   "cluster.cpusPerReplica plus 0.5 CPU for the HTTP ingress must fit"),
    "worker-cpus-fit": ({"cluster": {"nodeType": "m5.2xlarge", "worker": {"cpus": 8}}},
                        "cluster.worker.cpus must fit the node type"),
    "worker-memory-fit": ({"cluster": {"worker": {"memoryGi": 64}}}, "cluster.worker.memoryGi must fit the node type"),
    "head-cpus-fit": ({"cluster": {"nodeType": "m5.xlarge", "head": {"cpus": 4}}},
                      "cluster.head.cpus must fit the node type"),
    "head-memory-fit": ({"cluster": {"nodeType": "m5.xlarge", "head": {"memoryGi": 16}}},
                        "cluster.head.memoryGi must fit the node type"),
    "ray-version-auth": ({"cluster": {"rayVersion": "2.51.9"}},
                         "cluster.rayVersion must be 2.52.0 or later"),
    # one replica of GPT-2 124M: 640 + 475 + 72 x 19 x 3/2 MiB + 1024 MiB > 4 GiB (18 fits: the boundary case)
    "worker-memory-admission": ({"serving": {"maxBatchSize": 19},
                                 "cluster": {"cpusPerReplica": 1, "worker": {"cpus": 2, "memoryGi": 4}}},
                                "the model replicas that fit on one worker pod need more memory than it has"),
}


# --- cluster test helpers (a kubernetes CustomObjectsApi as `api`) ---------------------------------------------


def load_sample(stem: str) -> dict:
    return yaml.safe_load((ROOT / "manifests" / "samples" / f"{stem}.yaml").read_text())


def create_tgs(api, namespace: str, doc: dict) -> dict:
    return api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, doc)


def get(api, namespace: str, plural: str, name: str, group: str = C.RAY_GROUP, version: str = "v1"):
    try:
        return api.get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_tgs(api, namespace: str, name: str):
    return get(api, namespace, C.PLURAL, name, C.GROUP, C.VERSION)


# --- what KubeRay makes of a RayService ------------------------------------------------------------------------


def effective_pods(doc: dict) -> dict[str, dict]:
    """The pod specs KubeRay makes from the RayService's templates (ray-operator v1.5 controllers/ray/common/pod.go)."""
    rs = build_rayservice(doc["metadata"]["name"], "ns", doc["spec"])
    cluster = rs["spec"]["rayClusterConfig"]
    head = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
    if cluster["enableInTreeAutoscaling"]:
        opts = cluster["autoscalerOptions"]
        head["containers"].append({"name": "autoscaler", "image": head["containers"][0]["image"],
                                   "securityContext": opts.get("securityContext"),
                                   "volumeMounts": opts.get("volumeMounts", [])})
    (group,) = cluster["workerGroupSpecs"]
    worker = copy.deepcopy(group["template"]["spec"])
    worker["initContainers"] = [{"name": "wait-gcs-ready", "image": worker["containers"][0]["image"],
                                 "securityContext": copy.deepcopy(worker["containers"][0].get("securityContext"))}]
    return {"head": head, "worker": worker}
