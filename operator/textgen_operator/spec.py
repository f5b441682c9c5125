"""The TextGenService schema: one set of pydantic models that both generates the CRD (crd.py) and validates specs
inside the operator (validation.py).

Cross-field rules are declared once as `Rule`s: a CEL expression with a human message, which crd.py writes into the
CRD's `x-kubernetes-validations`, and the equivalent Python predicate the operator runs on the same object.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional

import textgen_contract as SC
from pydantic import Field, model_validator

from . import memory
from .constants import (
    DEFAULT_IMAGE,
    DEFAULT_NODE_TYPE,
    INGRESS_CPUS,
    MAX_NAME_LENGTH,
    NODE_CPU_HEADROOM,
    NODE_TYPE_LABEL,
    NODE_TYPES,
    RAY_VERSION,
)
from .core_schemas import VOLUME_SOURCES
from .schema_base import Rule
from .schema_base import SchemaObject as _Obj
from .schema_base import cel_map as _cel_map

_NODE_NAMES = tuple(NODE_TYPES)
NodeTypeName = Literal[_NODE_NAMES]  # type: ignore[valid-type]
_ALLOC_CPUS = {n.name: n.allocatable_cpus for n in NODE_TYPES.values()}
_ALLOC_MEM = {n.name: n.allocatable_memory_gib for n in NODE_TYPES.values()}
_ALLOC_TEXT = ", ".join(f"{n.name}: {n.allocatable_cpus} CPUs / {n.allocatable_memory_gib} GiB" for n in NODE_TYPES.values())


# --- spec ----------------------------------------------------------------------------------------------------------


AUTOSCALING_MIN_DEFAULT = 1
AUTOSCALING_MAX_DEFAULT = 4
# Whether autoscaling is on, in CEL: `enabled` when given, else whether any bound is given (see Autoscaling).
_CEL_MIN = f"(has(self.autoscaling.minReplicas) ? self.autoscaling.minReplicas : {AUTOSCALING_MIN_DEFAULT})"
_CEL_MAX = f"(has(self.autoscaling.maxReplicas) ? self.autoscaling.maxReplicas : {AUTOSCALING_MAX_DEFAULT})"
CEL_AUTOSCALING_ON = ("(has(self.autoscaling.enabled) ? self.autoscaling.enabled : "
                      "(has(self.autoscaling.minReplicas) || has(self.autoscaling.maxReplicas)))")


class Autoscaling(_Obj):
    """Ray Serve autoscaling of the model replicas (and, through KubeRay's in-tree autoscaler, of worker nodes)."""

    # Bounds given without `enabled` turn autoscaling on: a spec that gives bounds means them (they used to be ignored
    # silently); an explicit `enabled: false` pauses autoscaling and keeps the bounds for later.
    enabled: Optional[bool] = Field(
        None, description="Autoscale the model replicas between minReplicas and maxReplicas; when false, "
        "spec.replicas is a fixed count. Unset: on exactly when minReplicas or maxReplicas is set.")
    min_replicas: Optional[int] = Field(
        None, ge=0, le=1000,
        description=f"Fewest model replicas (0 scales to zero when idle; default {AUTOSCALING_MIN_DEFAULT}).")
    max_replicas: Optional[int] = Field(
        None, ge=1, le=1000, description=f"Most model replicas (default {AUTOSCALING_MAX_DEFAULT}).")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica that the autoscaler aims for.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Seconds of sustained load before adding replicas.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Seconds of low load before removing replicas.")
    look_back_period_s: float = Field(30.0, gt=0, description="Window in seconds over which load is averaged.")
    node_idle_timeout_s: int = Field(
        60, ge=0, description="Seconds an idle worker node is kept before KubeRay's autoscaler removes it.")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        """Fill in what the CRD leaves unset, so the parsed spec always says whether autoscaling is on."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        keys = {"enabled", "min_replicas", "max_replicas", "minReplicas", "maxReplicas"}
        given = {k for k, v in data.items() if k in keys and v is not None}
        if "enabled" not in given:
            data["enabled"] = bool(given)
        if not given & {"min_replicas", "minReplicas"}:
            data["minReplicas"] = AUTOSCALING_MIN_DEFAULT
        if not given & {"max_replicas", "maxReplicas"}:
            data["maxReplicas"] = AUTOSCALING_MAX_DEFAULT
        return data

    rules = (
        Rule(f"{_CEL_MIN.replace('self.autoscaling.', 'self.')} <= {_CEL_MAX.replace('self.autoscaling.', 'self.')}",
             "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
             lambda s: s.min_replicas <= s.max_replicas),
    )


class ModelSource(_Obj):
    """Which model the serve app loads."""

    name: str = Field("gpt2", min_length=1, max_length=512,
                      description="Hugging Face Hub id (e.g. gpt2, gpt2-medium) or a directory inside the image.")
    served_model_name: Optional[str] = Field(
        None, min_length=1, max_length=253, description="Name reported by /v1/models (default: the model name).")
    fallback_model_dir: Optional[str] = Field(
        None, min_length=1, max_length=512,
        description="Directory in the image with a stand-in model, used (and reported loudly) when `name` cannot "
                    "be loaded offline.")


class Serving(_Obj):
    """Batching and generation limits, passed to the serve app as its args."""

    max_batch_size: int = Field(SC.MAX_BATCH_SIZE.default, ge=SC.MAX_BATCH_SIZE.ge, le=SC.MAX_BATCH_SIZE.le,
                                description="Most requests decoded together in one engine step.")
    max_tokens_limit: int = Field(SC.MAX_TOKENS_LIMIT.default, ge=SC.MAX_TOKENS_LIMIT.ge, le=SC.MAX_TOKENS_LIMIT.le,
                                  description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(SC.DEFAULT_MAX_TOKENS.default, ge=SC.DEFAULT_MAX_TOKENS.ge,
                                    le=SC.DEFAULT_MAX_TOKENS.le, description="max_tokens when a request gives none.")
    max_ongoing_requests: Optional[int] = Field(
        SC.MAX_ONGOING_REQUESTS.default, ge=SC.MAX_ONGOING_REQUESTS.ge, le=SC.MAX_ONGOING_REQUESTS.le,
        description="Requests one model replica handles at once (Serve max_ongoing_requests; default twice "
        "maxBatchSize: a full batch running and one arriving).")
    max_queued_requests: int = Field(
        SC.MAX_QUEUED_REQUESTS.default, ge=SC.MAX_QUEUED_REQUESTS.ge, le=SC.MAX_QUEUED_REQUESTS.le,
        description="Requests waiting for a batch slot (per replica, and per caller of each deployment) before new "
        "ones are rejected with 503.")
    dtype: Literal[SC.DTYPES] = Field(  # type: ignore[valid-type]
        SC.DEFAULT_DTYPE,
        description="Compute dtype of the model replicas. bfloat16 and int8 (dynamically quantized linear layers) "
        "change numerics within quality-guarded bounds; auto picks bfloat16 only on CPUs with native bf16 (AMX or "
        "AVX-512 BF16, e.g. m7i), float32 elsewhere (m5).",
    )
    torch_threads: Optional[int] = Field(
        SC.TORCH_THREADS.default, ge=SC.TORCH_THREADS.ge, le=SC.TORCH_THREADS.le,
        description="Torch intra-op threads per replica (default: the replica's CPUs).")

    @property
    def model_max_ongoing_requests(self) -> int:
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return SC.model_max_ongoing_requests(self.max_batch_size)

    rules = (
        Rule("self.defaultMaxTokens <= self.maxTokensLimit",
             "serving.defaultMaxTokens must be less than or equal to serving.maxTokensLimit",
             lambda s: s.default_max_tokens <= s.max_tokens_limit),
        Rule("!has(self.maxOngoingRequests) || self.maxOngoingRequests >= self.maxBatchSize",
             "serving.maxOngoingRequests must be at least serving.maxBatchSize, or a replica can never fill a batch",
             lambda s: s.max_ongoing_requests is None or s.max_ongoing_requests >= s.max_batch_size),
    )


class PodResources(_Obj):
    """CPU and memory of one Ray pod (requests = limits)."""

    cpus: Optional[int] = Field(None, ge=1, le=256, description="Whole CPUs of the pod.")
    memory_gi: Optional[int] = Field(None, ge=1, le=2048, description="Memory of the pod in GiB.")


def _fits(field: str, table: dict[str, int], what: str) -> Rule:
    """`<field>.cpus|memoryGi`, when set, must fit the node type's allocatable share."""
    attr = "cpus" if what == "cpus" else "memory_gi"
    key = "cpus" if what == "cpus" else "memoryGi"
    return Rule(
        f"!has(self.{field}.{key}) || self.{field}.{key} <= {_cel_map(table)}[self.nodeType]",
        f"cluster.{field}.{key} must fit the node type with headroom for the kubelet and system pods "
        f"(at most {_ALLOC_TEXT})",
        lambda s: getattr(getattr(s, field), attr) is None or getattr(getattr(s, field), attr) <= table[s.node_type],
    )


def _core(kind: str, **kw: Any) -> Any:
    """A field the API server validates with core/v1's schema of `kind` (crd.py inlines it from core_schemas.py)."""
    return Field(json_schema_extra={"x-core-v1": kind}, **kw)


_VOLUME_SOURCES = ", ".join(VOLUME_SOURCES)
_CEL_ONE_SOURCE = "[" + ", ".join(f"has(v.{src})" for src in VOLUME_SOURCES) + "].filter(x, x).size() == 1"
_RESERVED_VOLUMES = ("shared-mem", "autoscaler-api-access")  # KubeRay's /dev/shm, pod_security.py's token volume


class PodCustomisation(_Obj):
    """Kubernetes fields for the Ray head and worker pods (none can change their securityContext: restricted)."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels (ours win on a clash).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector terms besides the node type's instance-type label.")
    tolerations: list[dict[str, Any]] = _core("Toleration", default_factory=list, max_length=32)
    affinity: Optional[dict[str, Any]] = _core("Affinity", default=None)
    image_pull_secrets: list[dict[str, Any]] = _core("LocalObjectReference", default_factory=list, max_length=16)
    service_account_name: Optional[str] = Field(
        None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="ServiceAccount of the Ray pods (no token is mounted; with autoscaling KubeRay binds its "
        "autoscaler Role to the head's).")
    priority_class_name: Optional[str] = Field(None, max_length=253, description="PriorityClass of the Ray pods.")
    env: list[dict[str, Any]] = _core("EnvVar", default_factory=list, max_length=64,
                                      description="Environment variables of the Ray containers.")
    env_from: list[dict[str, Any]] = _core("EnvFromSource", default_factory=list, max_length=16)
    volumes: list[dict[str, Any]] = _core(
        "Volume", default_factory=list, max_length=16,
        description=f"Pod volumes: {_VOLUME_SOURCES} (the restricted Pod Security Standard's types).")
    volume_mounts: list[dict[str, Any]] = _core("VolumeMount", default_factory=list, max_length=16,
                                                description="Mounts of `volumes` in the Ray containers.")

    rules = (
        Rule(f"!has(self.nodeSelector) || !('{NODE_TYPE_LABEL}' in self.nodeSelector)",
             f"cluster.pod.nodeSelector must not set {NODE_TYPE_LABEL}: cluster.nodeType decides it",
             lambda p: NODE_TYPE_LABEL not in p.node_selector),
        Rule("!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
             "self.volumes.exists(v, v.name == m.name))",
             "cluster.pod.volumeMounts must name volumes of cluster.pod.volumes",
             lambda p: {m.get("name") for m in p.volume_mounts} <= {v.get("name") for v in p.volumes}),
        # Also checked here (not only per item in the CRD): the chart's podDefaults reach the operator unchecked.
        Rule(f"!has(self.volumes) || self.volumes.all(v, {_CEL_ONE_SOURCE})",
             f"cluster.pod.volumes may only use one of {_VOLUME_SOURCES} each (the restricted Pod Security "
             "Standard's types; no hostPath)",
             lambda p: all(len(set(v) - {"name"}) == 1 and set(v) - {"name"} <= set(VOLUME_SOURCES) for v in p.volumes)),
        Rule("!has(self.volumes) || self.volumes.all(v, !(v.name in " + str(list(_RESERVED_VOLUMES)) + "))",
             f"cluster.pod.volumes must not be named {' or '.join(_RESERVED_VOLUMES)} (used by the Ray pods)",
             lambda p: not {v.get("name") for v in p.volumes} & set(_RESERVED_VOLUMES)),
    )


# Ray versions with token authentication (ray_auth.MIN_RAY_VERSION, 2.52): 2.52-2.99, 2.100+, 3+.
_RAY_AUTH_VERSIONS = r"^(2[.](5[2-9]|[6-9][0-9]|[1-9][0-9]{2,})|([3-9]|[1-9][0-9]+)[.][0-9]+)[.][0-9]+$"


class Cluster(_Obj):
    """Shape of the KubeRay cluster: image, Ray version, node type and how CPUs are shared out."""

    image: str = Field(DEFAULT_IMAGE, min_length=1, description="Ray image with the serve app (images/serve).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the Ray containers.")
    ray_version: str = Field(RAY_VERSION, pattern=r"^\d+\.\d+\.\d+$",
                             description="Ray version of the image (KubeRay's rayVersion).")
    node_type: NodeTypeName = Field(  # type: ignore[valid-type]
        DEFAULT_NODE_TYPE, description="Instance type of the Ray nodes, selected by the "
        "node.kubernetes.io/instance-type label.")
    cpus_per_replica: float = Field(
        2.0, ge=0.25, le=64, description="CPUs (Ray num_cpus) of one model replica.")
    head: PodResources = Field(
        default_factory=PodResources,
        description="Head pod resources (default 2 CPUs, 8 GiB). The head runs no Serve replicas.")
    worker: PodResources = Field(
        default_factory=PodResources,
        description="Worker pod resources (default: the node type's vCPUs minus 1, and 7/8 of its memory).")
    pod: PodCustomisation = Field(default_factory=PodCustomisation,
                                  description="Kubernetes fields for the Ray head and worker pods.")
    upgrade_strategy: Literal["NewCluster", "None"] = Field(
        "NewCluster", description="What KubeRay does when the cluster shape changes: NewCluster (zero-downtime, "
        "needs room for two clusters) or None (no new cluster).")

    rules = (
        Rule(f"self.rayVersion.matches('{_RAY_AUTH_VERSIONS}')",
             "cluster.rayVersion must be 2.52.0 or later: the Ray clusters run with Ray token authentication, which "
             "KubeRay refuses for older Ray", lambda s: re.match(_RAY_AUTH_VERSIONS, s.ray_version) is not None),
        _fits("head", _ALLOC_CPUS, "cpus"),
        _fits("head", _ALLOC_MEM, "memory"),
        _fits("worker", _ALLOC_CPUS, "cpus"),
        _fits("worker", _ALLOC_MEM, "memory"),
        Rule(
            f"self.cpusPerReplica + {INGRESS_CPUS} <= double(has(self.worker.cpus) ? self.worker.cpus : "
            f"{_cel_map(_ALLOC_CPUS)}[self.nodeType])",
            f"cluster.cpusPerReplica plus {INGRESS_CPUS} CPU for the HTTP ingress must fit in one worker pod "
            f"(cluster.worker.cpus, by default the node type's vCPUs minus {NODE_CPU_HEADROOM})",
            lambda s: s.cpus_per_replica + INGRESS_CPUS <= s.worker_cpus,
        ),
    )

    @property
    def node(self):
        return NODE_TYPES[self.node_type]

    @property
    def worker_cpus(self) -> int:
        return self.worker.cpus if self.worker.cpus is not None else self.node.allocatable_cpus

    @property
    def worker_memory_gi(self) -> int:
        return self.worker.memory_gi if self.worker.memory_gi is not None else self.node.allocatable_memory_gib

    @property
    def head_cpus(self) -> int:
        return self.head.cpus if self.head.cpus is not None else 2

    @property
    def head_memory_gi(self) -> int:
        return self.head.memory_gi if self.head.memory_gi is not None else 8

    @property
    def replicas_per_node(self) -> int:
        """Model replicas that fit on one worker next to one ingress replica."""
        return math.floor((self.worker_cpus - INGRESS_CPUS) / self.cpus_per_replica)


class TextGenServiceSpec(_Obj):
    """Desired state of a TextGenService: a GPT-2 text generation endpoint on a KubeRay cluster."""

    replicas: int = Field(
        1, ge=1, le=1000,
        description="Model replicas. A fixed count when autoscaling is off; the initial count (within "
                    "[minReplicas, maxReplicas]) when it is on. `kubectl scale` sets this field.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description=Autoscaling.__doc__)
    model: ModelSource = Field(default_factory=ModelSource, description=ModelSource.__doc__)
    serving: Serving = Field(default_factory=Serving, description=Serving.__doc__)
    cluster: Cluster = Field(default_factory=Cluster, description=Cluster.__doc__)

    rules = (
        Rule(f"!{CEL_AUTOSCALING_ON} || (self.replicas >= {_CEL_MIN} && self.replicas <= {_CEL_MAX})",
             "replicas must be within [autoscaling.minReplicas, autoscaling.maxReplicas] when autoscaling is on "
             "(enabled: true, or minReplicas/maxReplicas set without enabled)",
             lambda s: not s.autoscaling.enabled
             or s.autoscaling.min_replicas <= s.replicas <= s.autoscaling.max_replicas),
        Rule(memory.cel_rule(CEL_AUTOSCALING_ON, _CEL_MAX), memory.MESSAGE, lambda s: s.fits_worker_memory),
    )

    @property
    def replicas_on_one_worker(self) -> int:
        """Most model replicas one worker pod can hold: its CPU share, and no more than there can be in all."""
        total = self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas
        return min(self.cluster.replicas_per_node, total)

    @property
    def fits_worker_memory(self) -> bool:
        return memory.fits(model=self.model.name, max_batch_size=self.serving.max_batch_size,
                           replicas_on_node=self.replicas_on_one_worker,
                           worker_memory_gi=self.cluster.worker_memory_gi)


DNS1035 = "^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Rules on the whole object (the only place CEL can see metadata.name).
ROOT_RULES = (
    Rule(f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
         f"metadata.name must be at most {MAX_NAME_LENGTH} characters: KubeRay derives the RayCluster and service "
         "names from it",
         lambda name: len(name) <= MAX_NAME_LENGTH),
    Rule(f"self.metadata.name.matches('{DNS1035}')",
         "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
         "KubeRay names the RayCluster and its Services after it",
         lambda name: re.fullmatch(DNS1035, name) is not None),
)


# --- status --------------------------------------------------------------------------------------------------------


class Condition(_Obj):
    """A standard Kubernetes condition."""

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="One CamelCase word.")
    message: str = Field("", description="What a person should know.")
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"})
    observed_generation: Optional[int] = Field(None, description="The generation this condition describes.")


class TextGenServiceStatus(_Obj):
    """Observed state, mirrored from the RayService."""

    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Degraded.")
    observed_generation: Optional[int] = Field(None, description="The spec generation the RayService was built from.")
    replicas: Optional[int] = Field(None, description="Model replicas asked of Ray Serve (the scale subresource); "
                                    "with autoscaling, Serve's current target.")
    ready_replicas: Optional[int] = Field(
        None, description="Model replicas serving: those Ray Serve reports RUNNING (its REST API on the head); when "
        "the head cannot be asked, all of them while the app is RUNNING and its model deployment HEALTHY, else 0.")
    selector: Optional[str] = Field(None, description="Label selector of the worker pods (the scale subresource).")
    url: Optional[str] = Field(None, description="In-cluster URL of the serve endpoint.")
    ray_service_name: Optional[str] = Field(None, description="Name of the RayService.")
    ray_cluster_name: Optional[str] = Field(None, description="Name of the active RayCluster.")
