"""Names, versions and the node-type table: the one place other modules (and other areas' tests) read them from."""

from __future__ import annotations

from dataclasses import dataclass

import textgen_contract as SC

# --- the TextGenService resource -------------------------------------------------------------------------------
GROUP = "textgen.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TextGenService"
PLURAL = "textgenservices"
SINGULAR = "textgenservice"
SHORT_NAMES = ("tgs",)
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"

# --- KubeRay ----------------------------------------------------------------------------------------------------
RAY_GROUP = "ray.io"
RAY_VERSION_API = "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_VERSION_API}"
RAYSERVICE_PLURAL = "rayservices"
RAYCLUSTER_PLURAL = "rayclusters"
# KubeRay appends "-<5 random chars>" to a RayService name for its RayCluster, and the longest service suffix
# ("-serve-svc") must still fit a 63-character DNS label: RayService names are at most 53 - 6 = 47 characters.
MAX_NAME_LENGTH = 47

# --- what the operator deploys ------------------------------------------------------------------------------------
# The Ray version of the serve image (images/serve builds FROM rayproject/ray:<RAY_VERSION>-py311-cpu) and of the
# rayVersion field KubeRay reads. The chart/images tests assert the Dockerfile's base tag matches this constant.
RAY_VERSION = "2.60.0"
SERVE_IMAGE_REPOSITORY = "textgen-serve"
SERVE_IMAGE_TAG = "0.1.0"
DEFAULT_IMAGE = f"{SERVE_IMAGE_REPOSITORY}:{SERVE_IMAGE_TAG}"

# The serve app's names and port: the one serving contract (contract/textgen_contract/__init__.py).
APP_NAME = SC.APP_NAME
APP_IMPORT_PATH = SC.APP_IMPORT_PATH
MODEL_DEPLOYMENT = SC.MODEL_DEPLOYMENT
INGRESS_DEPLOYMENT = SC.INGRESS_DEPLOYMENT
SERVE_PORT = SC.SERVE_PORT
# CPUs reserved on every worker node for one replica of the FastAPI ingress deployment.
INGRESS_CPUS = 0.5

# The operator's Prometheus metrics (metrics.py; `--metrics-port`, 0 disables). Not 8080: kopf's liveness endpoint
# (the chart's operator.healthPort) has that one.
METRICS_PORT = 8081

FIELD_MANAGER = "textgen-operator"
MANAGED_BY = "textgen-operator"
# Labels and annotations the operator puts on what it creates.
LABEL_SERVICE = f"{GROUP}/service"
ANNOTATION_GENERATION = f"{GROUP}/generation"  # the TextGenService generation a RayService was built from
ANNOTATION_PREFIX = GROUP  # kopf's progress/diff-base annotations live under this prefix

NODE_TYPE_LABEL = "node.kubernetes.io/instance-type"
WORKER_GROUP = "workers"


@dataclass(frozen=True)
class NodeType:
    """A machine type the worker group can be pinned to."""

    name: str
    vcpus: int
    memory_gib: int

    # Headroom left on each node for the kubelet, the container runtime and daemon sets.
    @property
    def allocatable_cpus(self) -> int:
        return self.vcpus - NODE_CPU_HEADROOM

    @property
    def allocatable_memory_gib(self) -> int:
        return self.memory_gib - self.memory_gib // NODE_MEMORY_HEADROOM_DIVISOR


NODE_CPU_HEADROOM = 1  # vCPU
NODE_MEMORY_HEADROOM_DIVISOR = 8  # keep 1/8 of the node's memory free

NODE_TYPES: dict[str, NodeType] = {
    n.name: n
    for n in (
        NodeType("m5.xlarge", 4, 16),
        NodeType("m5.2xlarge", 8, 32),
        NodeType("m5.4xlarge", 16, 64),
        NodeType("m5.8xlarge", 32, 128),
    )
}
DEFAULT_NODE_TYPE = "m5.4xlarge"
