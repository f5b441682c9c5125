"""spec.cluster.pod (spec.PodCustomisation) applied to a Ray pod template from builder._pod_template.

The user's fields go beside the operator's, and the operator's win where both set something: our labels, the
node type's instance-type nodeSelector term, our volumes. No field reaches a securityContext, host namespace or
privileged setting (the restricted Pod Security Standard holds whatever is set here), and the API server refuses
hostPath and other volume types outside the restricted list (the CRD's rules).

Cluster-wide defaults come from the chart's `podDefaults` ($TEXTGEN_POD_DEFAULTS, JSON): a TextGenService's own
value of a field replaces the default of that field.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
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


DEFAULTS_ENV = "TEXTGEN_POD_DEFAULTS"


def with_pod_defaults(spec: Mapping[str, Any] | None, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`spec` with the cluster-wide pod defaults under its own spec.cluster.pod fields. An empty field counts as
    unset (the API server fills in `{}` for the maps), so it takes the default."""
    out = copy.deepcopy(dict(spec or {}))
    defaults = json.loads(environ.get(DEFAULTS_ENV) or "{}")
    if not defaults:
        return out
    cluster = out.setdefault("cluster", {})
    own = {k: v for k, v in (cluster.get("pod") or {}).items() if v not in (None, {}, [], "")}
    cluster["pod"] = {**defaults, **own}
    return out
