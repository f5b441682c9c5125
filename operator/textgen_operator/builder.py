"""Pure builders: a TextGenService spec -> the KubeRay RayService (ray.io/v1) that serves it. No I/O here.

Replica counts and autoscaling live in `serveConfigV2`, which KubeRay applies in place to the running cluster.
The worker group's bounds are derived from them: KubeRay leaves worker replicas/min/max out of its cluster hash,
so changing them never starts a new cluster (it does not resize the running one either; Ray's in-tree autoscaler
does that when autoscaling is on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import textgen_contract as SC
import yaml

from . import constants as C
from . import pod_security as PS
from . import ray_auth as RA
from .pod_customisation import customise
from .spec import TextGenServiceSpec
from .validation import validate


def as_spec(name: str, spec: TextGenServiceSpec | Mapping[str, Any]) -> TextGenServiceSpec:
    return spec if isinstance(spec, TextGenServiceSpec) else validate(name, spec)


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "textgen-serve",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "textgen-operator",
        "app.kubernetes.io/managed-by": C.MANAGED_BY,
        C.LABEL_SERVICE: name,
    }


def pod_labels(name: str, component: str) -> dict[str, str]:
    # KubeRay sets app.kubernetes.io/name and created-by on Ray pods itself; keep those.
    return {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "textgen-operator",
        C.LABEL_SERVICE: name,
    }


def worker_selector(name: str) -> str:
    """Label selector of the worker pods (the scale subresource's labelSelectorPath)."""
    return f"{C.LABEL_SERVICE}={name},ray.io/node-type=worker"


def serve_url(name: str, namespace: str) -> str:
    # KubeRay names the RayService's serve Service "<rayservice>-serve-svc" (utils.GenerateServeServiceName).
    return f"http://{name}-serve-svc.{namespace}.svc:{C.SERVE_PORT}"


def worker_bounds(spec: TextGenServiceSpec) -> tuple[int, int, int]:
    """(replicas, minReplicas, maxReplicas) of the worker group: nodes needed for the model replica bounds."""
    per_node = spec.cluster.replicas_per_node

    def nodes(model_replicas: int) -> int:
        return math.ceil(model_replicas / per_node)

    if not spec.autoscaling.enabled:
        n = nodes(spec.replicas)
        return n, n, n
    lo, hi = nodes(spec.autoscaling.min_replicas), nodes(spec.autoscaling.max_replicas)
    return min(max(nodes(spec.replicas), lo), hi), lo, hi


def app_args(spec: TextGenServiceSpec) -> dict[str, Any]:
    """The serve app's `args` (serve_app.config.AppArgs): unset optional keys are left out."""
    s, m = spec.serving, spec.model
    args: dict[str, Any] = {"model": m.name}
    if m.served_model_name is not None:
        args["served_model_name"] = m.served_model_name
    if m.fallback_model_dir is not None:
        args["fallback_model_dir"] = m.fallback_model_dir
    args.update(
        max_batch_size=s.max_batch_size,
        max_tokens_limit=s.max_tokens_limit,
        default_max_tokens=s.default_max_tokens,
        max_queued_requests=s.max_queued_requests,
        dtype=s.dtype,
    )
    if s.torch_threads is not None:
        args["torch_threads"] = s.torch_threads
    return args


# Ray gives the head node this resource (amount 1) and no other node: a tiny share pins an actor to the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def scales_to_zero(spec: TextGenServiceSpec) -> bool:
    return spec.autoscaling.enabled and spec.autoscaling.min_replicas == 0


def ingress_placement(spec: TextGenServiceSpec) -> dict[str, Any]:
    """Ray actor options of the HTTP ingress replicas.

    Normally they reserve INGRESS_CPUS on the workers, next to the model replicas they forward to. A service that
    scales to zero cannot keep one there: its reserved CPU would keep a worker busy for KubeRay's autoscaler, which
    then never removes it. So with minReplicas 0 the ingress runs on the head, which stays (Ray's built-in
    `node:__internal_head__` resource pins it; 0 CPUs, since the head starts with num-cpus 0 so that no model
    replica lands there). The head's proxy then holds the first request after zero while a worker comes back.
    """
    if scales_to_zero(spec):
        return {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}
    return {"num_cpus": C.INGRESS_CPUS}


def build_serve_config(spec: TextGenServiceSpec) -> dict[str, Any]:
    a, s = spec.autoscaling, spec.serving
    model: dict[str, Any] = {"name": C.MODEL_DEPLOYMENT}
    ingress: dict[str, Any] = {"name": C.INGRESS_DEPLOYMENT}
    workers, lo, hi = worker_bounds(spec)
    if a.enabled:
        model["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "initial_replicas": spec.replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "look_back_period_s": a.look_back_period_s,
        }
        # One ingress replica per worker node at most; it forwards the same requests the model replicas hold.
        ingress["autoscaling_config"] = {
            "min_replicas": max(1, lo),
            "initial_replicas": max(1, workers),
            "max_replicas": max(1, hi),
            "target_ongoing_requests": a.target_ongoing_requests * spec.cluster.replicas_per_node,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
            "look_back_period_s": a.look_back_period_s,
        }
    else:
        model["num_replicas"] = spec.replicas
        ingress["num_replicas"] = workers
    model.update(
        max_ongoing_requests=s.model_max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        ray_actor_options={"num_cpus": spec.cluster.cpus_per_replica},
    )
    ingress.update(
        max_ongoing_requests=s.model_max_ongoing_requests * spec.cluster.replicas_per_node,
        ray_actor_options=ingress_placement(spec),
    )
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": C.SERVE_PORT, "request_timeout_s": SC.REQUEST_TIMEOUT_S},
        "applications": [
            {
                "name": C.APP_NAME,
                "route_prefix": SC.ROUTE_PREFIX,
                "import_path": C.APP_IMPORT_PATH,
                "args": app_args(spec),
                "deployments": [model, ingress],
            }
        ],
    }


def _resources(cpus: int, memory_gi: int) -> dict[str, Any]:
    amount = {"cpu": str(cpus), "memory": f"{memory_gi}Gi"}
    return {"requests": dict(amount), "limits": dict(amount)}


# KubeRay's autoscaler sidecar runs in the head pod when autoscaling is on. Its share comes out of `cluster.head`, which
# sizes the whole head pod: KubeRay's default (0.5 CPU on top) would not fit a node sized for head + workers (the local
# node's 2 CPUs). Its loop is light: a GCS poll and a few API calls every few seconds.
AUTOSCALER_CPU_M = 200
AUTOSCALER_MEMORY_MI = 512


def _head_resources(spec: TextGenServiceSpec) -> dict[str, Any]:
    c = spec.cluster
    if not spec.autoscaling.enabled:
        return _resources(c.head_cpus, c.head_memory_gi)
    amount = {"cpu": f"{c.head_cpus * 1000 - AUTOSCALER_CPU_M}m",
              "memory": f"{c.head_memory_gi * 1024 - AUTOSCALER_MEMORY_MI}Mi"}
    return {"requests": dict(amount), "limits": dict(amount)}


def _autoscaler_resources() -> dict[str, Any]:
    amount = {"cpu": f"{AUTOSCALER_CPU_M}m", "memory": f"{AUTOSCALER_MEMORY_MI}Mi"}
    return {"requests": dict(amount), "limits": dict(amount)}


def _pod_template(name: str, spec: TextGenServiceSpec, component: str, container: dict[str, Any],
                  volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Ray pod template that meets the restricted Pod Security Standard (pod_security.py)."""
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": PS.pod_security_context(),
        "nodeSelector": {C.NODE_TYPE_LABEL: spec.cluster.node_type},
        "containers": [
            {
                "image": spec.cluster.image,
                "imagePullPolicy": spec.cluster.image_pull_policy,
                **container,
                "securityContext": PS.container_security_context(),
            }
        ],
    }
    if volumes:
        pod["volumes"] = volumes
    return customise({"metadata": {"labels": pod_labels(name, component)}, "spec": pod}, spec.cluster.pod)


def build_ray_cluster_spec(name: str, spec: TextGenServiceSpec) -> dict[str, Any]:
    c = spec.cluster
    workers, lo, hi = worker_bounds(spec)
    head = _pod_template(name, spec, "ray-head", {
        "name": "ray-head",
        "ports": [
            {"name": "gcs-server", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
            {"name": "serve", "containerPort": C.SERVE_PORT},
        ],
        "resources": _head_resources(spec),
    }, volumes=[PS.autoscaler_token_volume()] if spec.autoscaling.enabled else None)
    worker = _pod_template(name, spec, "ray-worker", {
        "name": "ray-worker",
        "resources": _resources(c.worker_cpus, c.worker_memory_gi),
    })
    cluster: dict[str, Any] = {
        "rayVersion": c.ray_version,
        # Ray token auth (ray_auth.py): KubeRay makes a per-cluster token Secret and hands it to every Ray process.
        "authOptions": dict(RA.AUTH_OPTIONS),
        "enableInTreeAutoscaling": spec.autoscaling.enabled,
    }
    if spec.autoscaling.enabled:
        cluster["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": spec.autoscaling.node_idle_timeout_s,
            "resources": _autoscaler_resources(),
            **PS.autoscaler_options(),
        }
    cluster["headGroupSpec"] = {
        # num-cpus 0: Ray schedules no Serve replica (nor any other CPU task) on the head. dashboard-host 0.0.0.0:
        # KubeRay and the operator reach 8265 through the head Service; the token and the NetworkPolicy
        # (networkpolicy.py) keep everyone else out, and nothing exposes it further (users port-forward).
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": head,
    }
    cluster["workerGroupSpecs"] = [
        {
            "groupName": C.WORKER_GROUP,
            "replicas": workers,
            "minReplicas": lo,
            "maxReplicas": hi,
            "rayStartParams": {},
            "template": worker,
        }
    ]
    return cluster


def build_rayservice(
    name: str,
    namespace: str,
    spec: TextGenServiceSpec | Mapping[str, Any],
    *,
    generation: int | None = None,
) -> dict[str, Any]:
    """The RayService for TextGenService `namespace/name` (without owner reference: the handler adds it)."""
    spec = as_spec(name, spec)
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels(name, "rayservice")}
    if generation is not None:
        meta["annotations"] = {C.ANNOTATION_GENERATION: str(generation)}
    return {
        "apiVersion": C.RAY_API_VERSION,
        "kind": "RayService",
        "metadata": meta,
        "spec": {
            "upgradeStrategy": {"type": spec.cluster.upgrade_strategy},
            "serveConfigV2": yaml.safe_dump(build_serve_config(spec), sort_keys=False, width=120),
            "rayClusterConfig": build_ray_cluster_spec(name, spec),
        },
    }
