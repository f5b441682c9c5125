"""The security settings of the Ray pods: what makes them pass the Kubernetes "restricted" Pod Security Standard.

- Pods run as the serve image's `ray` user (uid 1000, gid 100, as in rayproject/ray), numerically so that the
  kubelet can verify runAsNonRoot, with the runtime's default seccomp profile.
- Every container (and the wait-for-GCS init container KubeRay copies the Ray container's securityContext into)
  cannot escalate privileges and drops every capability.
- No pod mounts a ServiceAccount token. The one process that talks to the Kubernetes API is the in-tree
  autoscaler sidecar KubeRay injects into the head when autoscaling is on; KubeRay then runs the head under its
  own per-cluster ServiceAccount (named after the RayCluster, with a Role limited to that cluster's pods and
  RayCluster). The token is projected into the autoscaler container only, at the path the kubelet would use, so
  the Ray head process itself never sees it.
"""

from __future__ import annotations

from typing import Any

RAY_UID = 1000
RAY_GID = 100
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
AUTOSCALER_TOKEN_VOLUME = "autoscaler-api-access"
# The lifetime the kubelet asks for its own token volume; the API server extends such tokens, and Ray's
# autoscaler re-reads the file periodically anyway.
TOKEN_EXPIRATION_S = 3607


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def autoscaler_token_volume() -> dict[str, Any]:
    """A pod volume with what the kubelet's own `kube-api-access-*` volume holds: token, CA bundle, namespace."""
    return {
        "name": AUTOSCALER_TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_S}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


def autoscaler_options() -> dict[str, Any]:
    """The RayCluster's autoscalerOptions fields that harden KubeRay's autoscaler sidecar."""
    return {
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": AUTOSCALER_TOKEN_VOLUME, "mountPath": SA_DIR, "readOnly": True}],
    }
