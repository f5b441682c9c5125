"""What Ray Serve itself says about the model replicas: the one source of `status.readyReplicas`.

KubeRay's RayService status carries each Serve deployment's status and message but no per-replica states
(ray.io/v1 ServeDeploymentStatus), so READY would be all-or-nothing. Ray's dashboard on the head serves the
replicas (`GET /api/serve/applications/`: applications -> deployments -> replicas[].state, target_num_replicas).

`parse_model_replicas` is pure; `fetch_model_replicas` does the one HTTP call, bounded by a short timeout, and
returns None on any failure so that a slow or unreachable head never breaks a reconcile: the caller falls back to
KubeRay's view.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import constants as C

DASHBOARD_PORT = 8265
# Seconds for the whole call (connect + read). The status loop polls every few seconds; a head that does not answer
# within this is reported as unknown, not waited for.
FETCH_TIMEOUT_S = 3.0
APPLICATIONS_PATH = "/api/serve/applications/"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelReplicas:
    """The model deployment's replicas as Serve reports them."""

    running: int  # replicas in state RUNNING: the ones that serve
    target: int  # Serve's target_num_replicas (the autoscaler's current decision)
    states: tuple[str, ...]  # every replica's state, e.g. ("RUNNING", "STARTING")


def dashboard_url(ray_cluster: str, namespace: str) -> str:
    # KubeRay names the head Service "<raycluster>-head-svc" (utils.GenerateHeadServiceName); 8265 is its dashboard.
    return f"http://{ray_cluster}-head-svc.{namespace}.svc:{DASHBOARD_PORT}"


def parse_model_replicas(applications: Mapping[str, Any]) -> ModelReplicas | None:
    """The model deployment's replicas from a `/api/serve/applications/` answer; None when it does not list it (app
    not deployed yet, or being deleted)."""
    app = (applications.get("applications") or {}).get(C.APP_NAME)
    deployment = ((app or {}).get("deployments") or {}).get(C.MODEL_DEPLOYMENT)
    if not isinstance(deployment, Mapping):
        return None
    states = tuple(str(r.get("state")) for r in deployment.get("replicas") or [] if isinstance(r, Mapping))
    target = deployment.get("target_num_replicas")
    return ModelReplicas(running=states.count("RUNNING"), target=int(target) if target is not None else len(states),
                         states=states)


def fetch_model_replicas(base_url: str, token: str | None = None,
                         timeout: float = FETCH_TIMEOUT_S) -> ModelReplicas | None:
    """One GET of Serve's applications from the dashboard at `base_url`; `token` (Ray token auth) is sent as a
    bearer token. None when the head cannot be reached or answers anything but a parsable 200."""
    request = urllib.request.Request(base_url.rstrip("/") + APPLICATIONS_PATH, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - in-cluster http URL we build
            return parse_model_replicas(json.load(response))
    except (OSError, ValueError, urllib.error.URLError) as exc:  # unreachable, timed out, 4xx/5xx, not JSON
        log.debug("Serve replicas from %s unknown: %s", base_url, exc)
        return None
