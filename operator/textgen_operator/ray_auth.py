"""Ray token authentication of the Ray clusters the operator creates (KubeRay >= v1.5.1, Ray >= 2.52).

The RayCluster spec says `authOptions: {mode: token}`; KubeRay then creates, per RayCluster, a Secret named after
the cluster (utils.CheckName) holding `auth_token` (32 random bytes, base64), owned by the RayCluster, and injects
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from that Secret) into the Ray containers, the wait-gcs-ready init container
and the autoscaler. A RayService's clusters get new names (and new tokens) on every NewCluster upgrade, so the
token of the cluster that serves is found from `status.activeServiceStatus.rayClusterName`.

Clients of the head's dashboard (8265: jobs, Serve's REST API) send `Authorization: Bearer <token>`; without it Ray
answers 401 (no token) or 403 (wrong token). Serve's HTTP proxy (8000) is not behind the token.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from .ttl_cache import TTLCache

AUTH_OPTIONS: dict[str, Any] = {"mode": "token"}
# The minimum Ray version KubeRay accepts with authOptions.mode token (utils/validation.go).
MIN_RAY_VERSION = (2, 52, 0)
TOKEN_KEY = "auth_token"  # utils.RAY_AUTH_TOKEN_SECRET_KEY
_MAX_NAME = 50  # utils.CheckName
# The tokens the status loop sends to the dashboards, by (namespace, RayCluster): it asks every 5 s, the Secret is
# read once a minute at most (a cluster's token does not change; a new cluster has a new name, so a new key).
TOKENS: TTLCache[str] = TTLCache(ttl_s=60)


def auth_secret_name(ray_cluster: str) -> str:
    """The name of the token Secret KubeRay creates for RayCluster `ray_cluster` (utils.CheckName)."""
    s = ray_cluster[len(ray_cluster) - _MAX_NAME:] if len(ray_cluster) > _MAX_NAME else ray_cluster
    if s[0].isdigit() or not s[0].isalnum():
        s = "r" + s[1:]
    return s


def token_from_secret(data: Mapping[str, str] | None) -> str | None:
    """The token in a Secret's (base64) `data`, or None when the Secret does not hold one (yet)."""
    raw = (data or {}).get(TOKEN_KEY)
    return base64.b64decode(raw).decode() if raw else None


def active_ray_cluster(rayservice: Mapping[str, Any] | None) -> str | None:
    status = (rayservice or {}).get("status") or {}
    return (status.get("activeServiceStatus") or {}).get("rayClusterName") or None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
