"""Pure status mirroring: (TextGenService, its RayService) -> the TextGenService's `.status`. No I/O here."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from . import constants as C
from .builder import serve_url, worker_selector
from .validation import parse

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


def build_status(tgs: Mapping[str, Any], rayservice: Mapping[str, Any] | None, *, now: str | None = None,
                 conflict: str | None = None) -> dict[str, Any]:
    """The `.status` of TextGenService `tgs` given its RayService (None when there is none); `conflict` says why a
    RayService of the same name that is not ours blocks it (that one is never mirrored).

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
    parsed, problems = parse(name, tgs.get("spec"))
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
        status["replicas"] = parsed.replicas
        app = _app(rayservice)
        healthy = ready[0] == "True" and app.get("status") == "RUNNING" and \
            _get(app, "serveDeploymentStatuses", C.MODEL_DEPLOYMENT, "status") in (None, "HEALTHY")
        status["readyReplicas"] = parsed.replicas if healthy else 0
        applied = _get(rayservice, "metadata", "annotations", C.ANNOTATION_GENERATION)
        if applied is not None:
            status["observedGeneration"] = int(applied)

    cluster = _get(rayservice, "status", "activeServiceStatus", "rayClusterName")
    if cluster:
        status["rayClusterName"] = cluster
    status["conditions"] = [
        _condition(old.get(t), t, *values, generation, now)
        for t, values in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded))
    ]
    return status


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
