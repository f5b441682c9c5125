"""Simulated m5-family nodes for kwok: capacity, the system reserve the kubelet would keep, and the Node objects.

The reserve is the one the Amazon EKS AMI's bootstrap gives the kubelet (kube-reserved + the eviction threshold),
so allocatable is what a real EKS node of that type offers pods:
- CPU: 6% of the first core, 1% of the second, 0.5% of cores 3-4 and 0.25% of every core above 4
  (m5.4xlarge: 60 + 10 + 10 + 30 = 110m);
- memory: 255 MiB + 11 MiB per pod the node may run (EKS max pods from the ENI limits: m5.4xlarge 234), plus the
  100 MiB memory.available eviction threshold (m5.4xlarge: 255 + 2574 + 100 = 2929 MiB).
Capacity is the nominal vCPUs and GiB (the issue's 16 vCPU / 64 GiB for m5.4xlarge).
"""

from __future__ import annotations

from dataclasses import dataclass

from textgen_operator.constants import NODE_TYPE_LABEL, NODE_TYPES

# What kwok manages (its --manage-nodes-with-annotation-selector) and the taint it documents for fake nodes.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
SIM_LABEL = ("textgen.dev/sim", "true")
# EKS max pods per node (eni-max-pods.txt: ENIs x (IPv4 addresses per ENI - 1) + 2).
EKS_MAX_PODS = {"m5.xlarge": 58, "m5.2xlarge": 58, "m5.4xlarge": 234, "m5.8xlarge": 234}
EVICTION_HARD_MIB = 100


def reserved_millicpu(vcpus: int) -> int:
    tiers = ((1, 60), (1, 10), (2, 5), (10**6, 2.5))  # (cores in the tier, millicores reserved per core)
    left, total = vcpus, 0.0
    for cores, per_core in tiers:
        take = min(left, cores)
        total += take * per_core
        left -= take
    return round(total)


@dataclass(frozen=True)
class SimNode:
    instance_type: str
    vcpus: int
    memory_gib: int
    max_pods: int

    @staticmethod
    def of(instance_type: str) -> "SimNode":
        n = NODE_TYPES[instance_type]
        return SimNode(instance_type, n.vcpus, n.memory_gib, EKS_MAX_PODS[instance_type])

    @property
    def reserved_mib(self) -> int:
        return 255 + 11 * self.max_pods + EVICTION_HARD_MIB

    @property
    def allocatable_millicpu(self) -> int:
        return self.vcpus * 1000 - reserved_millicpu(self.vcpus)

    @property
    def allocatable_mib(self) -> int:
        return self.memory_gib * 1024 - self.reserved_mib

    def manifest(self, name: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    NODE_TYPE_LABEL: self.instance_type,
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    SIM_LABEL[0]: SIM_LABEL[1],
                },
            },
            "spec": {"taints": [dict(KWOK_TAINT)]},
            "status": {
                "capacity": {"cpu": str(self.vcpus), "memory": f"{self.memory_gib}Gi", "pods": str(self.max_pods)},
                "allocatable": {"cpu": f"{self.allocatable_millicpu}m", "memory": f"{self.allocatable_mib}Mi",
                                "pods": str(self.max_pods)},
            },
        }


# The seed: 8 m5.4xlarge workers, and one more m5.4xlarge for the head (its nodeSelector asks for the same type; a
# 15-CPU worker and the 4-CPU head never share a 16-vCPU node).
WORKER_NODES = 8
SIM_NODES = WORKER_NODES + 1
NODE = SimNode.of("m5.4xlarge")
