"""kopf handlers: side effects only; the logic lives in builder.py, status.py and validation.py.

- reconcile (create/update/resume of a TextGenService): validate, server-side apply the NetworkPolicy around its Ray
  pods, then the RayService, both owner-referenced (garbage collection deletes them: no finalizer), mirror status.
- rayservice_event (any change to a RayService we manage): the fast path of drift repair; its errors are logged
  and dropped by kopf, which is why the repair loop exists.
- the repair loop (started at startup, level-based): every REPAIR_INTERVAL_S, for every TextGenService kopf sees
  (an in-memory index: no finalizer, no extra watch), re-create a missing RayService, re-apply a drifted one and
  mirror status; a failure is retried on the next round. A RayService of the same name that this TextGenService
  does not own is never touched: the TextGenService reports Degraded/RayServiceConflict instead.
- the status loop (same index, every STATUS_INTERVAL_S): status only, for what changes without a RayService event:
  the model replicas Serve reports RUNNING (readyReplicas, scaled to zero) and a new cluster's unschedulable pods.

Each of these parses the TextGenService spec once (parse_tgs) and passes the result down (tests/operator/
test_per_event.py counts it), and counts what it did in metrics.py (README.md: Metrics).

Run with `python -m textgen_operator` or `kopf run --standalone -m textgen_operator.handlers`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from . import capacity
from . import constants as C
from . import metrics as M
from . import ray_auth as RA
from .builder import build_rayservice
from .networkpolicy import build_networkpolicy, settings_from_env
from .ownership import conflict_message, is_subset, owned_by
from .serve_status import dashboard_url, fetch_model_replicas
from .spec import TextGenServiceSpec
from .status import build_status, unschedulable_pods
from .validation import InvalidSpec, ParsedSpec, parse

_API: k8s.ApiClient | None = None
# (connect, read) seconds of every API call: a stuck connection fails (the repair loop retries), never pins a handler.
API_TIMEOUT_S = (10, 30)
REPAIR_INTERVAL_S = 15
# How often readyReplicas is refreshed from Serve's own replica states (status only: nothing is applied).
STATUS_INTERVAL_S = 5


def api() -> k8s.CustomObjectsApi:
    global _API
    if _API is None:
        cfg = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException:
            # $KUBECONFIG read now: the client's own default is frozen when the kubernetes package is imported.
            k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
        cfg.retries = 1  # with API_TIMEOUT_S: a dead server fails a call in about a minute, not urllib3's four tries
        _API = k8s.ApiClient(cfg)
    return k8s.CustomObjectsApi(_API)


def core_api() -> k8s.CoreV1Api:
    api()
    return k8s.CoreV1Api(_API)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials: the pod's service account, else $KUBECONFIG (read at login, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # Without these, watches can hang silently on some networks and the operator stops seeing events.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    # Progress and the diff base live in annotations: .status stays ours alone and strictly typed.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=C.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=C.ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.peering.standalone = True
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Events are posted explicitly (RayServiceApplied, InvalidSpec); log lines are not (posting.loggers stays off:
    # a line per RayService status change would flood the Events).
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = C.MANAGED_BY
    api()
    logger.info("textgen-operator ready: managing %s/%s -> %s RayServices", C.API_VERSION, C.KIND, C.RAY_API_VERSION)


# --- side effects -----------------------------------------------------------------------------------------------------


def _get_or_none(group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api().get_namespaced_custom_object(group, version, namespace, plural, name,
                                                  _request_timeout=API_TIMEOUT_S)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_rayservice(namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(C.RAY_GROUP, C.RAY_VERSION_API, C.RAYSERVICE_PLURAL, namespace, name)


def get_textgenservice(namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(C.GROUP, C.VERSION, C.PLURAL, namespace, name)


def ensure_networkpolicy(tgs: Mapping[str, Any], logger: logging.Logger) -> bool:
    """Apply the NetworkPolicy closing this TextGenService's Ray control plane unless it is in place as built
    (networkpolicy.py; settings from $TEXTGEN_NETWORK_POLICY), before the RayService, so the Ray pods are never
    unprotected; switched off, the one this TextGenService owns goes. True when it applied or deleted."""
    settings = settings_from_env(os.environ)
    meta = tgs["metadata"]
    desired = build_networkpolicy(meta["name"], meta["namespace"], settings)
    kopf.adopt(desired, owner=tgs)
    policy = desired["metadata"]["name"]
    net = k8s.NetworkingV1Api(api().api_client)
    try:
        current = net.api_client.sanitize_for_serialization(
            net.read_namespaced_network_policy(policy, meta["namespace"], _request_timeout=API_TIMEOUT_S))
    except ApiException as exc:
        if exc.status != 404:
            raise
        current = None
    if not settings.enabled:
        return current is not None and delete_own_networkpolicy(net, tgs, current, logger)
    if current is not None and is_subset(desired, current):
        return False
    net.patch_namespaced_network_policy(
        policy, meta["namespace"], desired, field_manager=C.FIELD_MANAGER, force=True, field_validation="Strict",
        _content_type="application/apply-patch+yaml", _request_timeout=API_TIMEOUT_S)
    logger.info("Applied NetworkPolicy %s: %s", policy, "it was missing" if current is None else "it drifted")
    return True


def delete_own_networkpolicy(net: k8s.NetworkingV1Api, tgs: Mapping[str, Any], policy: Mapping[str, Any],
                             logger: logging.Logger) -> bool:
    """Delete ``policy`` if this TextGenService is its controller (uid precondition: never one re-made meanwhile)."""
    meta = policy["metadata"]
    if not owned_by(policy, tgs):
        return False
    options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=meta["uid"]))
    try:
        net.delete_namespaced_network_policy(meta["name"], meta["namespace"], body=options,
                                             _request_timeout=API_TIMEOUT_S)
    except ApiException as exc:
        if exc.status not in (404, 409):  # 404/409: gone or replaced meanwhile, nothing of ours to delete
            raise
        return False
    logger.info("Deleted NetworkPolicy %s: NetworkPolicies are switched off", meta["name"])
    return True


def apply_rayservice(body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: we own exactly the fields we send; force takes them back from whoever edited them."""
    meta = body["metadata"]
    response = api().patch_namespaced_custom_object(
        C.RAY_GROUP, C.RAY_VERSION_API, meta["namespace"], C.RAYSERVICE_PLURAL, meta["name"], body,
        field_manager=C.FIELD_MANAGER, force=True, field_validation="Strict",
        _content_type="application/apply-patch+yaml", _request_timeout=API_TIMEOUT_S, _preload_content=False)
    # Read the body ourselves: the client deserialises only a 200 and returns None for an apply that created the
    # object (201), which left the re-created RayService out of status and capacity (a TypeError in sync).
    return json.loads(response.data)


def ray_auth_token(namespace: str, ray_cluster: str) -> str | None:
    """RayCluster `ray_cluster`'s dashboard token (ray_auth.py; its Secret read once a minute at most), or None."""
    def read() -> str | None:
        try:
            return RA.token_from_secret(core_api().read_namespaced_secret(
                RA.auth_secret_name(ray_cluster), namespace, _request_timeout=API_TIMEOUT_S).data)
        except (ApiException, OSError):
            return None
    return RA.TOKENS.get((namespace, ray_cluster), read)


def observe(tgs: Mapping[str, Any], rayservice: Mapping[str, Any] | None) -> dict[str, Any]:
    """What build_status needs besides the RayService: Serve's model replicas on the active cluster (None when the
    head cannot be asked now) and the pending cluster's pods that cannot be scheduled. Never raises."""
    meta, rs_status = tgs["metadata"], (rayservice or {}).get("status") or {}
    namespace = meta["namespace"]
    seen: dict[str, Any] = {}
    active = (rs_status.get("activeServiceStatus") or {}).get("rayClusterName")
    if active:
        seen["serve"] = fetch_model_replicas(dashboard_url(active, namespace), ray_auth_token(namespace, active))
    pending = (rs_status.get("pendingServiceStatus") or {}).get("rayClusterName")
    if pending:
        try:
            pods = core_api().list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={pending}",
                                                  _request_timeout=API_TIMEOUT_S)
            seen["unschedulable"] = unschedulable_pods([pod.to_dict(serialize=True) for pod in pods.items])
        except (ApiException, OSError) as exc:  # status without it this round; the next one retries
            logging.getLogger(__name__).warning("listing the pods of RayCluster %s failed: %s", pending, exc)
    return seen


def patch_status(tgs: Mapping[str, Any], status: dict[str, Any]) -> None:
    if is_subset(status, tgs.get("status") or {}):
        return
    meta = tgs["metadata"]
    try:
        api().patch_namespaced_custom_object_status(
            C.GROUP, C.VERSION, meta["namespace"], C.PLURAL, meta["name"], {"status": status},
            _content_type="application/merge-patch+json", _request_timeout=API_TIMEOUT_S)
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


def desired_rayservice(tgs: Mapping[str, Any], spec: TextGenServiceSpec) -> dict[str, Any]:
    meta = tgs["metadata"]
    body = build_rayservice(meta["name"], meta["namespace"], spec, generation=meta.get("generation"))
    kopf.adopt(body, owner=tgs)  # controller owner reference (+ the owner's labels where ours do not set them)
    return body


def ensure_rayservice(tgs: Mapping[str, Any], spec: TextGenServiceSpec, current: Mapping[str, Any] | None,
                      changed: str, logger: logging.Logger) -> tuple[Mapping[str, Any], bool]:
    """Apply the desired RayService unless `current` already has all of it; returns the RayService as it is now and
    whether it applied.

    `changed` says, for the log and the Event, why a `current` that differs does: a spec change or a drift.
    """
    desired = desired_rayservice(tgs, spec)
    if current is not None and is_subset(desired, current):
        return current, False
    applied = apply_rayservice(desired)
    message = (f"Applied RayService {desired['metadata']['name']} (generation {tgs['metadata'].get('generation')}): "
               + ("it was missing" if current is None else changed))
    logger.info(message)
    kopf.info(tgs, reason="RayServiceApplied", message=message)
    return applied, True


def parse_tgs(tgs: Mapping[str, Any]) -> ParsedSpec:
    """The one parse of a TextGenService per event: each handler calls this once and passes the result down."""
    return parse(tgs["metadata"]["name"], tgs.get("spec"))


def report_conflict(tgs: Mapping[str, Any], parsed: ParsedSpec, foreign: Mapping[str, Any],
                    logger: logging.Logger) -> None:
    """Leave a RayService we do not own alone; say so on the TextGenService (one Event per conflict, not per round)."""
    message = conflict_message(tgs, foreign)
    old = {c.get("type"): c for c in (tgs.get("status") or {}).get("conditions") or []}
    if (old.get("Degraded") or {}).get("reason") != "RayServiceConflict":
        logger.warning(message)
        kopf.warn(tgs, reason="RayServiceConflict", message=message)
    patch_status(tgs, build_status(tgs, parsed, None, conflict=message))


def sync(tgs: Mapping[str, Any], parsed: ParsedSpec, current: Mapping[str, Any] | None, why: str,
         logger: logging.Logger) -> None:
    """Level-based: make the RayService match a valid spec (unless someone else owns it), then mirror status."""
    if current is not None and not owned_by(current, tgs):
        report_conflict(tgs, parsed, current, logger)
        return
    if parsed.spec is not None:  # an invalid spec was reported by reconcile: change nothing, keep mirroring status
        if ensure_networkpolicy(tgs, logger):
            M.DRIFT_REPAIRS.labels("NetworkPolicy").inc()
        current, repaired = ensure_rayservice(tgs, parsed.spec, current, why, logger)
        if repaired:
            M.DRIFT_REPAIRS.labels("RayService").inc()
        capacity.ensure_worker_nodes(api(), current, parsed.spec, logger, API_TIMEOUT_S)  # KubeRay does not resize it
    patch_status(tgs, build_status(tgs, parsed, current, **observe(tgs, current)))


def repair(namespace: str, name: str, logger: logging.Logger) -> None:
    tgs = get_textgenservice(namespace, name)
    if tgs is None or tgs["metadata"].get("deletionTimestamp"):
        return  # gone or going: garbage collection takes the RayService with it
    sync(tgs, parse_tgs(tgs), get_rayservice(namespace, name), "it drifted from its TextGenService", logger)


# --- handlers -------------------------------------------------------------------------------------------------------


@kopf.index(C.GROUP, C.VERSION, C.PLURAL)
def textgenservice_keys(namespace: str, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    """Every TextGenService kopf watches, for the repair loop."""
    return {(namespace, name): True}


def refresh_status(namespace: str, name: str, logger: logging.Logger) -> None:
    """Status only (READY from Serve, scaled to zero, unschedulable pods): these change with no RayService event."""
    tgs = get_textgenservice(namespace, name)
    if tgs is None or tgs["metadata"].get("deletionTimestamp"):
        return
    current = get_rayservice(namespace, name)
    if current is not None and not owned_by(current, tgs):
        return  # the repair loop reports the conflict
    patch_status(tgs, build_status(tgs, parse_tgs(tgs), current, **observe(tgs, current)))


async def every(interval_s: float, what: str, step, keys: kopf.Index, logger: logging.Logger, *,
                handler: str) -> None:
    """Run `step(namespace, name, logger)` for every TextGenService every `interval_s`, level-based; `handler`
    names the step in the metrics."""
    while True:
        await asyncio.sleep(interval_s)
        M.MANAGED.set(len(keys))
        for namespace, name in list(keys):
            try:
                await asyncio.to_thread(step, namespace, name, logger)
            except Exception as exc:  # noqa: BLE001 - retried next round; one bad object must not stop the others
                M.HANDLER_ERRORS.labels(handler).inc()
                logger.warning("%s %s/%s failed, retrying in %s s: %s", what, namespace, name, interval_s, exc)


@kopf.on.startup()
async def start_repair_loop(memo: kopf.Memo, textgenservice_keys: kopf.Index, logger: logging.Logger,
                            **_: Any) -> None:
    memo["repair_task"] = asyncio.create_task(
        every(REPAIR_INTERVAL_S, "repairing", repair, textgenservice_keys, logger, handler="repair"),
        name="textgen repair loop")
    memo["status_task"] = asyncio.create_task(
        every(STATUS_INTERVAL_S, "refreshing the status of", refresh_status, textgenservice_keys, logger,
              handler="refresh_status"), name="textgen status loop")


@kopf.on.cleanup()
async def stop_repair_loop(memo: kopf.Memo, **_: Any) -> None:
    for task in (memo.get("repair_task"), memo.get("status_task")):
        if task is not None:
            task.cancel()


@kopf.on.resume(C.GROUP, C.VERSION, C.PLURAL)
@kopf.on.create(C.GROUP, C.VERSION, C.PLURAL)
@kopf.on.update(C.GROUP, C.VERSION, C.PLURAL, field="spec")
def reconcile(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    try:
        outcome = reconcile_once(dict(body), logger)
    except kopf.PermanentError:
        M.RECONCILES.labels("invalid").inc()
        raise
    except Exception:
        M.RECONCILES.labels("error").inc()
        M.HANDLER_ERRORS.labels("reconcile").inc()
        raise
    M.RECONCILES.labels(outcome).inc()


def reconcile_once(tgs: dict[str, Any], logger: logging.Logger) -> str:
    """Make the RayService match the spec; returns the outcome for the metrics (applied, unchanged, conflict) or
    raises kopf.PermanentError for an invalid spec (after reporting it)."""
    namespace, name = tgs["metadata"]["namespace"], tgs["metadata"]["name"]
    parsed = parse_tgs(tgs)
    current = get_rayservice(namespace, name)
    if current is not None and not owned_by(current, tgs):
        report_conflict(tgs, parsed, current, logger)  # the repair loop takes over once the other RayService is gone
        return "conflict"
    try:
        valid = parsed.require()
    except InvalidSpec as exc:
        patch_status(tgs, build_status(tgs, parsed, current))
        kopf.warn(tgs, reason="InvalidSpec", message="; ".join(exc.problems))
        raise kopf.PermanentError(str(exc)) from exc  # no retries until the spec changes
    policy_applied = ensure_networkpolicy(tgs, logger)
    current, applied = ensure_rayservice(tgs, valid, current, "the TextGenService spec changed", logger)
    patch_status(tgs, build_status(tgs, parsed, current, **observe(tgs, current)))
    return "applied" if applied or policy_applied else "unchanged"


def _owner_name(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == C.KIND and ref.get("apiVersion", "").startswith(C.GROUP + "/") and ref.get("controller"):
            return ref.get("name")
    return None


@kopf.on.event(C.RAY_GROUP, C.RAY_VERSION_API, C.RAYSERVICE_PLURAL,
               labels={"app.kubernetes.io/managed-by": C.MANAGED_BY})
def rayservice_event(event: kopf.RawEvent, body: kopf.Body, namespace: str, logger: logging.Logger,
                     **_: Any) -> None:
    owner = _owner_name(body)
    if owner is None:
        return
    try:
        tgs = get_textgenservice(namespace, owner)
        if tgs is None or tgs["metadata"].get("deletionTimestamp"):
            return  # the owner is going away; garbage collection takes the RayService with it
        current = None if event.get("type") == "DELETED" else dict(body)
        sync(tgs, parse_tgs(tgs), current, "it drifted from its TextGenService", logger)
    except Exception:
        M.HANDLER_ERRORS.labels("rayservice_event").inc()  # kopf logs it and drops it; the repair loop retries
        raise
