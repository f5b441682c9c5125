"""Memory admission: the model replicas that can land on one worker pod, each at its worst (weights plus a KV cache
full at maxBatchSize x the whole context), must fit the worker pod's memory limit, or the first full burst OOMs it.

The engine's KV cache grows on demand but never past max_batch_size slots of the model's context
(serve_app/engine/kv_cache.py); while it doubles it briefly holds the old copy too, hence the 3/2. Sizes are float32
(the default dtype, and the largest). One formula, written twice: as CEL for the API server and as Python for the
operator (validation.py), from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import INGRESS_CPUS, NODE_TYPES


@dataclass(frozen=True)
class ModelSize:
    weights_mib: int  # float32 parameters
    kv_mib_per_sequence: int  # float32 keys + values of one request at the full 1024-token context

    @staticmethod
    def of(n_params_m: float, n_layer: int, n_embd: int) -> "ModelSize":
        return ModelSize(round(n_params_m * 1e6 * 4 / 2**20), 2 * n_layer * n_embd * 1024 * 4 // 2**20)


MODEL_SIZES: dict[str, ModelSize] = {
    "gpt2": ModelSize.of(124.4, 12, 768),
    "gpt2-medium": ModelSize.of(354.8, 24, 1024),
    "gpt2-large": ModelSize.of(774.0, 36, 1280),
    "gpt2-xl": ModelSize.of(1557.6, 48, 1600),
}
# Any other name (a directory in the image, the stand-in) is taken as GPT-2 124M, the architecture the app serves.
DEFAULT_MODEL = "gpt2"
# Besides the weights, per model replica: the Ray worker process, torch, the tokenizer, activations (measured: a
# GPT-2 124M replica is ~1.1 GB with its weights).
REPLICA_OVERHEAD_MIB = 640
# Per worker pod whatever the replicas: the raylet, Serve's proxy and one ingress replica.
NODE_OVERHEAD_MIB = 1024


def _cel_map(values: dict[str, int]) -> str:
    return "{" + ", ".join(f"'{k}': {v}" for k, v in values.items()) + "}"


def replica_mib(model: str, max_batch_size: int) -> int:
    size = MODEL_SIZES.get(model, MODEL_SIZES[DEFAULT_MODEL])
    return REPLICA_OVERHEAD_MIB + size.weights_mib + size.kv_mib_per_sequence * max_batch_size * 3 // 2


def fits(*, model: str, max_batch_size: int, replicas_on_node: int, worker_memory_gi: int) -> bool:
    return replicas_on_node * replica_mib(model, max_batch_size) + NODE_OVERHEAD_MIB <= worker_memory_gi * 1024


def cel_rule(autoscaling_on: str, max_replicas: str) -> str:
    """The same check in CEL, on the spec object, given the CEL for whether autoscaling is on and its maximum."""
    weights = _cel_map({k: v.weights_mib for k, v in MODEL_SIZES.items()})
    kv = _cel_map({k: v.kv_mib_per_sequence for k, v in MODEL_SIZES.items()})
    cpus = _cel_map({n.name: n.allocatable_cpus for n in NODE_TYPES.values()})
    mem = _cel_map({n.name: n.allocatable_memory_gib for n in NODE_TYPES.values()})
    default = MODEL_SIZES[DEFAULT_MODEL]
    worker_cpus = f"(has(self.cluster.worker.cpus) ? self.cluster.worker.cpus : {cpus}[self.cluster.nodeType])"
    per_node = f"int((double({worker_cpus}) - {INGRESS_CPUS}) / self.cluster.cpusPerReplica)"
    total = f"({autoscaling_on} ? {max_replicas} : self.replicas)"
    on_node = f"({per_node} < {total} ? {per_node} : {total})"
    name = "self.model.name"
    replica = (f"({REPLICA_OVERHEAD_MIB} + ({name} in {weights} ? {weights}[{name}] : {default.weights_mib}) + "
               f"({name} in {kv} ? {kv}[{name}] : {default.kv_mib_per_sequence}) * self.serving.maxBatchSize * 3 / 2)")
    worker_mem = f"(has(self.cluster.worker.memoryGi) ? self.cluster.worker.memoryGi : {mem}[self.cluster.nodeType])"
    return f"{on_node} * {replica} + {NODE_OVERHEAD_MIB} <= {worker_mem} * 1024"


MESSAGE = (
    "the model replicas that fit on one worker pod need more memory than it has: replicas per worker x (weights + "
    f"{REPLICA_OVERHEAD_MIB} MiB + a full KV cache of serving.maxBatchSize x 1024 tokens, x1.5 while it grows) + "
    f"{NODE_OVERHEAD_MIB} MiB must fit cluster.worker.memoryGi (the first full burst would OOM the pod); lower "
    "serving.maxBatchSize or the replicas per worker (raise cluster.cpusPerReplica), or give workers more memory")
