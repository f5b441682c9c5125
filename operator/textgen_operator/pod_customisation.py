"""spec.cluster.pod (spec.PodCustomisation) applied to a Ray pod template from builder._pod_template.

The user's fields go beside the operator's, and the operator's win where both set something: our labels, the
node type's instance-type nodeSelector term, our volumes. No field reaches a securityContext, host namespace or
privileged setting (the restricted Pod Security Standard holds whatever is set here), and the API server refuses
hostPath and other volume types outside the restricted list (the CRD's rules).
"""

from __future__ import annotations

import copy
from typing import Any

from .spec import PodCustomisation


def customise(template: dict[str, Any], pod: PodCustomisation) -> dict[str, Any]:
    """A copy of `template` with `pod` applied to the pod and to its first (Ray) container."""
    out = copy.deepcopy(template)
    meta, spec = out["metadata"], out["spec"]
    ray = spec["containers"][0]
    meta["labels"] = {**pod.labels, **meta.get("labels", {})}
    if pod.annotations:
        meta["annotations"] = {**pod.annotations, **meta.get("annotations", {})}
    spec["nodeSelector"] = {**pod.node_selector, **spec.get("nodeSelector", {})}
    for key, value in (("tolerations", pod.tolerations), ("affinity", pod.affinity),
                       ("imagePullSecrets", pod.image_pull_secrets), ("serviceAccountName", pod.service_account_name),
                       ("priorityClassName", pod.priority_class_name)):
        if value:
            spec[key] = copy.deepcopy(value)
    if pod.volumes:
        spec["volumes"] = copy.deepcopy(pod.volumes) + spec.get("volumes", [])
    for key, value in (("env", pod.env), ("envFrom", pod.env_from), ("volumeMounts", pod.volume_mounts)):
        if value:
            ray[key] = copy.deepcopy(value) + ray.get(key, [])
    return out
