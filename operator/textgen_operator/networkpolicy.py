"""Pure builder of the NetworkPolicy that closes a TextGenService's Ray control plane. No I/O here.

Reaching a Ray head's GCS (6379), dashboard/job API (8265) or client port (10001) lets anyone run code on the
cluster, so the policy (one per TextGenService, selecting its Ray pods by our service label) admits:
- the Ray pods of the same TextGenService, on every port (Ray's workers, raylets and object managers talk on
  ports Ray picks at run time);
- the control-plane peers (by default the KubeRay operator, and the textgen operator itself when it runs in a
  pod: it polls Serve's REST API on 8265) on 6379/8265/10001 only;
- the Serve HTTP port from the peers the chart's `networkPolicy.serveFrom` lists, or from anywhere when it is empty
  (the Serve endpoint is the product: clients in other namespaces call it).
Anything else (metrics on 8080, the dashboard from a laptop) is refused; NetworkPolicies add up, so a user admits
more with a policy of their own. The chart passes its values to the operator as JSON in $TEXTGEN_NETWORK_POLICY.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import constants as C
from .builder import labels

ENV_SETTINGS = "TEXTGEN_NETWORK_POLICY"
CONTROL_PLANE_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}

# KubeRay's own Helm chart labels its operator pods app.kubernetes.io/name=kuberay-operator.
KUBERAY_OPERATOR_PEER: dict[str, Any] = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
}


@dataclass(frozen=True)
class NetworkPolicySettings:
    enabled: bool = True
    control_plane_from: tuple[Mapping[str, Any], ...] = (KUBERAY_OPERATOR_PEER,)
    serve_from: tuple[Mapping[str, Any], ...] = ()  # empty: from anywhere


def settings_from_env(environ: Mapping[str, str]) -> NetworkPolicySettings:
    """Settings from $TEXTGEN_NETWORK_POLICY (`{"enabled", "controlPlaneFrom", "serveFrom"}`), defaults without it."""
    raw = environ.get(ENV_SETTINGS, "").strip()
    if not raw:
        return NetworkPolicySettings()
    data = json.loads(raw)
    unknown = set(data) - {"enabled", "controlPlaneFrom", "serveFrom"}
    if unknown:
        raise ValueError(f"${ENV_SETTINGS}: unknown keys {sorted(unknown)}")
    default = NetworkPolicySettings()
    return NetworkPolicySettings(
        enabled=bool(data.get("enabled", True)),
        control_plane_from=tuple(data.get("controlPlaneFrom", default.control_plane_from)),
        serve_from=tuple(data.get("serveFrom") or ()),
    )


def policy_name(name: str) -> str:
    return f"{name}-ray"


def ray_pods(name: str) -> dict[str, Any]:
    """The Ray pods (head and workers, of every cluster generation) of TextGenService `name`."""
    return {"matchLabels": {C.LABEL_SERVICE: name}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def build_networkpolicy(name: str, namespace: str, settings: NetworkPolicySettings) -> dict[str, Any]:
    """The NetworkPolicy of TextGenService `namespace/name` (without owner reference: the handler adds it)."""
    serve: dict[str, Any] = {"ports": _tcp(C.SERVE_PORT)}
    if settings.serve_from:
        serve["from"] = [dict(p) for p in settings.serve_from]
    ingress = [{"from": [{"podSelector": ray_pods(name)}]}]
    if settings.control_plane_from:
        ingress.append({"from": [dict(p) for p in settings.control_plane_from],
                        "ports": _tcp(*CONTROL_PLANE_PORTS.values())})
    ingress.append(serve)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(name),
            "namespace": namespace,
            "labels": labels(name, "networkpolicy"),
        },
        "spec": {"podSelector": ray_pods(name), "policyTypes": ["Ingress"], "ingress": ingress},
    }
