"""Pure status mirroring: (TextGenService, its RayService, what Serve and the pods say) -> the TextGenService's
`.status`. No I/O here: handlers.py fetches Serve's replica states (serve_status.py) and the pending cluster's pods.

- readyReplicas: the model replicas Serve reports RUNNING when Serve could be asked; else KubeRay's all-or-nothing
  view (every replica while the app is RUNNING and the model deployment HEALTHY, else 0).
- ScaledToZero / ScalingFromZero (Ready reasons, never Degraded): autoscaling down to 0 replicas is the plan, and
  the next request is held by the head's proxy while a replica starts.
- NewClusterUnschedulable (Progressing=False): a NewCluster upgrade whose pods cannot be scheduled, named with the
  scheduler's reason, instead of an upgrade that looks in progress forever.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import constants as C
from .builder import serve_url, worker_selector
from .serve_status import ModelReplicas

if TYPE_CHECKING:  # the handlers parse the spec once per event; nothing here parses it again
    from .validation import ParsedSpec

_FAILED_APP = {"DEPLOY_FAILED": "ApplicationDeployFailed", "UNHEALTHY": "ApplicationUnhealthy"}
_STARTING_APP = {None: "ApplicationPending", "NOT_STARTED": "ApplicationNotStarted",
                 "DEPLOYING": "ApplicationDeploying", "DELETING": "ApplicationDeleting"}


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(d: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _condition(old: Mapping[str, Any] | None, type_: str, status: str, reason: str, message: str,
               generation: int | None, now: str) -> dict[str, Any]:
    keep_time = old is not None and old.get("status") == status and old.get("lastTransitionTime")
    cond = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": old["lastTransitionTime"] if keep_time else now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def unschedulable_pods(pods: list[Mapping[str, Any]]) -> str | None:
    """'<pod>: <scheduler message>' for each Pending pod the scheduler could not place; None when there is none."""
    found = []
    for pod in pods:
        if _get(pod, "status", "phase") != "Pending" or _get(pod, "metadata", "deletionTimestamp"):
            continue
        scheduled = next((c for c in _get(pod, "status", "conditions") or [] if c.get("type") == "PodScheduled"), {})
        if scheduled.get("status") == "False":
            found.append(f"{_get(pod, 'metadata', 'name')}: {scheduled.get('message') or scheduled.get('reason')}")
    return "; ".join(sorted(found)) or None


def build_status(tgs: Mapping[str, Any], parsed: ParsedSpec, rayservice: Mapping[str, Any] | None, *,
                 now: str | None = None, conflict: str | None = None, serve: ModelReplicas | None = None,
                 unschedulable: str | None = None) -> dict[str, Any]:
    """The `.status` of TextGenService `tgs` (`parsed`: its spec through validation.parse) given its RayService
    (None when there is none); `conflict` says why a RayService of the same name that is not ours blocks it (that
    one is never mirrored). `serve`: the model replicas Serve reports on the active cluster (None: unknown);
    `unschedulable`: the pending cluster's pods the scheduler cannot place (`unschedulable_pods`).

    Keys left out (replicas when the spec is invalid) keep their old values under a merge patch.
    """
    now = now or now_rfc3339()
    meta = tgs.get("metadata") or {}
    name, namespace, generation = meta["name"], meta.get("namespace", "default"), meta.get("generation")
    old = {c.get("type"): c for c in _get(tgs, "status", "conditions") or []}

    status: dict[str, Any] = {
        "rayServiceName": name,
        "url": serve_url(name, namespace),
        "selector": worker_selector(name),
    }
    spec, problems = parsed
    ready, progressing, degraded = _mirror(rayservice, generation)

    if conflict:
        ready = ("False", "RayServiceConflict", conflict)
        degraded = ("True", "RayServiceConflict", conflict)
        progressing = ("False", "RayServiceConflict", "Waiting for the other RayService to go away.")
    if problems:
        degraded = ("True", "InvalidSpec", "; ".join(problems))
        progressing = ("False", "InvalidSpec", "The operator will not apply this spec; fix it to continue.")
        status["observedGeneration"] = generation
    else:
        status["replicas"] = spec.replicas
        app = _app(rayservice)
        healthy = ready[0] == "True" and app.get("status") == "RUNNING" and \
            _get(app, "serveDeploymentStatuses", C.MODEL_DEPLOYMENT, "status") in (None, "HEALTHY")
        status["readyReplicas"] = spec.replicas if healthy else 0
        if serve is not None and not conflict:
            status["readyReplicas"] = serve.running
            if spec.autoscaling.enabled:
                status["replicas"] = serve.target  # the autoscaler's decision, not the initial count
            if spec.autoscaling.min_replicas == 0 and spec.autoscaling.enabled and degraded[0] == "False" \
                    and app.get("status") == "RUNNING" and serve.running == 0:
                ready, progressing = _zero(serve, progressing)
        applied = _get(rayservice, "metadata", "annotations", C.ANNOTATION_GENERATION)
        if applied is not None:
            status["observedGeneration"] = int(applied)

    cluster = _get(rayservice, "status", "activeServiceStatus", "rayClusterName")
    if unschedulable and progressing[0] == "True" and progressing[1] in _NEW_CLUSTER_REASONS:
        progressing = ("False", "NewClusterUnschedulable",
                       f"The new RayCluster cannot be scheduled (the old one keeps serving): {unschedulable}") \
            if cluster else ("False", "ClusterUnschedulable", f"The RayCluster cannot be scheduled: {unschedulable}")

    if cluster:
        status["rayClusterName"] = cluster
    status["conditions"] = [
        _condition(old.get(t), t, *values, generation, now)
        for t, values in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded))
    ]
    return status


_NEW_CLUSTER_REASONS = ("UpgradeInProgress", "PreparingNewCluster")


def _zero(serve: ModelReplicas, progressing: tuple[str, str, str]):
    """(Ready, Progressing) of an app that runs with no model replica: scaled to zero, or on its way back."""
    held = "requests are held by the head's proxy until a replica runs (see README: cold start)"
    if serve.target == 0:
        ready = ("True", "ScaledToZero", f"No model replica runs (idle); the next request starts one: {held}.")
        if progressing[0] == "False":
            progressing = ("False", "ScaledToZero", "Scaled to zero while idle.")
        return ready, progressing
    return ("True", "ScalingFromZero", f"Starting {serve.target} model replica(s) from zero: {held}."), \
        ("True", "ScalingFromZero", f"Replica states: {', '.join(serve.states) or 'none yet'}.")


def _app(rayservice: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _get(rayservice, "status", "activeServiceStatus", "applicationStatuses", C.APP_NAME) or {}


def _mirror(rs: Mapping[str, Any] | None, generation: int | None):
    """(Ready, Progressing, Degraded) as (status, reason, message) triples, from the RayService."""
    if rs is None:
        return (("False", "RayServiceMissing", "The RayService does not exist yet."),
                ("True", "CreatingRayService", "Creating the RayService."),
                ("False", "AsExpected", ""))
    rs_status = rs.get("status") or {}
    conds = {c.get("type"): c for c in rs_status.get("conditions") or []}
    rs_ready = conds.get("Ready")
    if rs_ready:
        ready = (rs_ready.get("status", "Unknown"), rs_ready.get("reason") or "Unknown", rs_ready.get("message", ""))
    else:
        ready = ("False", "Initializing", "Waiting for KubeRay to report on the RayService.")

    app = _app(rs)
    app_status, app_msg = app.get("status"), app.get("message", "")
    model_status = _get(app, "serveDeploymentStatuses", C.MODEL_DEPLOYMENT)
    if app_status in _FAILED_APP:
        degraded = ("True", _FAILED_APP[app_status], app_msg or f"Serve application {C.APP_NAME} is {app_status}.")
    elif _get(model_status, "status") == "UNHEALTHY":
        degraded = ("True", "ModelDeploymentUnhealthy", _get(model_status, "message") or
                    f"Serve deployment {C.MODEL_DEPLOYMENT} is UNHEALTHY.")
    elif ready[1] == "InitializingTimeout":
        degraded = ("True", "InitializingTimeout", ready[2])
    else:
        degraded = ("False", "AsExpected", "")

    upgrade = conds.get("UpgradeInProgress")
    rs_gen, rs_seen = _get(rs, "metadata", "generation"), rs_status.get("observedGeneration")
    applied = _get(rs, "metadata", "annotations", C.ANNOTATION_GENERATION)
    if applied is not None and generation is not None and int(applied) != generation:
        progressing = ("True", "ApplyingSpec", f"Applying generation {generation} to the RayService.")
    elif upgrade and upgrade.get("status") == "True" and _get(rs_status, "activeServiceStatus", "rayClusterName"):
        progressing = ("True", "UpgradeInProgress", upgrade.get("message") or "KubeRay is preparing a new cluster.")
    elif _get(rs_status, "pendingServiceStatus", "rayClusterName"):
        progressing = ("True", "PreparingNewCluster",
                       f"New RayCluster {rs_status['pendingServiceStatus']['rayClusterName']} is being prepared.")
    elif rs_gen is not None and rs_seen != rs_gen:
        progressing = ("True", "WaitingForKubeRay",
                       f"KubeRay has not yet observed RayService generation {rs_gen}.")
    elif degraded[0] == "True":
        progressing = ("False", degraded[1], degraded[2])
    elif app_status in _STARTING_APP:
        progressing = ("True", _STARTING_APP[app_status], app_msg or f"Serve application {C.APP_NAME} is starting.")
    elif ready[0] != "True":
        progressing = ("True", ready[1], ready[2])
    else:
        progressing = ("False", "Available", f"Serve application {C.APP_NAME} is RUNNING.")
    return ready, progressing, degraded
