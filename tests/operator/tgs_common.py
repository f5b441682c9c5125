"""Shared helpers for the operator tests. tests/operator has no __init__.py on purpose (a package named `operator`
would shadow the standard library), so this module has a unique name and tests import it directly."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = ROOT / "manifests" / "samples"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))


# (spec, the message the operator and the API server both give)
RULE_CASES = {
    "min<=max": ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
                 "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    "replicas-in-bounds": ({"replicas": 9, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
                           "replicas must be within [autoscaling.minReplicas, autoscaling.maxReplicas] when "
                           "autoscaling is enabled"),
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
}
