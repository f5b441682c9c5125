"""Worker nodes of the running cluster: with autoscaling off, the active RayCluster's worker group holds the nodes the
spec needs (builder.worker_bounds), so scaling a fixed TextGenService across node counts adds and removes worker pods.

Why the operator does this itself: KubeRay (v1.5) compares a RayService with its RayCluster by a hash that leaves the
worker groups' replicas, minReplicas and maxReplicas out, so a RayService whose only change is the worker count never
reaches the running cluster (no update, no new cluster). With autoscaling on, Ray's autoscaler owns those fields
(replicas and scaleStrategy.workersToDelete, within min..max): the operator leaves them alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import constants as C
from .builder import worker_bounds
from .spec import TextGenServiceSpec


def cluster_names(rayservice: Mapping[str, Any] | None) -> list[str]:
    """The RayService's active and pending RayClusters (a first deployment stays pending until Serve is up)."""
    status = (rayservice or {}).get("status") or {}
    names = [(status.get(k) or {}).get("rayClusterName") for k in ("activeServiceStatus", "pendingServiceStatus")]
    return [n for n in names if n]


def worker_group_patch(raycluster: Mapping[str, Any], spec: TextGenServiceSpec) -> list[dict[str, Any]] | None:
    """A JSON patch giving our worker group the fixed count the spec needs, or None when nothing is to change
    (autoscaling on, no such group, or the counts already right). The `test` op makes a concurrent reorder fail the
    patch instead of resizing another group."""
    if spec.autoscaling.enabled:
        return None
    groups = (raycluster.get("spec") or {}).get("workerGroupSpecs") or []
    index = next((i for i, g in enumerate(groups) if g.get("groupName") == C.WORKER_GROUP), None)
    if index is None:
        return None
    group = groups[index]
    want = dict(zip(("replicas", "minReplicas", "maxReplicas"), worker_bounds(spec)))
    if all(group.get(k) == v for k, v in want.items()):
        return None
    path = f"/spec/workerGroupSpecs/{index}"
    return [{"op": "test", "path": f"{path}/groupName", "value": C.WORKER_GROUP}] + [
        {"op": "add", "path": f"{path}/{k}", "value": v} for k, v in want.items()]


def ensure_worker_nodes(api: Any, rayservice: Mapping[str, Any] | None, spec: TextGenServiceSpec,
                        logger: logging.Logger, timeout: tuple[float, float]) -> None:
    """Patch the worker group of the RayService's RayClusters to the spec's node count (a CustomObjectsApi as `api`).
    Both are resized: the pending one is the one that will serve, the active one serves until then. A failure is
    logged, not raised: status is still mirrored, and the repair loop retries on its next round."""
    if spec.autoscaling.enabled:
        return
    namespace = rayservice["metadata"]["namespace"]
    for name in cluster_names(rayservice):
        try:
            raycluster = api.get_namespaced_custom_object(C.RAY_GROUP, C.RAY_VERSION_API, namespace,
                                                          C.RAYCLUSTER_PLURAL, name, _request_timeout=timeout)
            patch = worker_group_patch(raycluster, spec)
            if patch is None:
                continue
            api.patch_namespaced_custom_object(C.RAY_GROUP, C.RAY_VERSION_API, namespace, C.RAYCLUSTER_PLURAL, name,
                                               patch, _content_type="application/json-patch+json",
                                               _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:  # 404: KubeRay removed that cluster meanwhile
                logger.warning("resizing the workers of RayCluster %s failed (retried later): %s %s", name,
                               exc.status, exc.reason)
            continue
        logger.info("RayCluster %s: worker group %s resized to %s node(s)", name, C.WORKER_GROUP, patch[1]["value"])
