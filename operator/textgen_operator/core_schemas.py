"""core/v1 schemas for the CRD's pod customisation fields (spec.cluster.pod), so that the API server validates them
as it validates a Pod's own fields, with no x-kubernetes-preserve-unknown-fields.

They come from the Kubernetes OpenAPI definitions that kubernetes-validate ships (a dev dependency, pinned in
constraints.txt), for the oldest Kubernetes the project validates against, and are made structural: $refs
inlined, descriptions dropped (the CRD stays small), nullable types flattened, quantities and int-or-strings as
x-kubernetes-int-or-string. Only `make manifests` (crd.py) uses this module; the operator does not.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

K8S_VERSION = "1.33.0"
CORE = "io.k8s.api.core.v1."
INT_OR_STRING = {"io.k8s.apimachinery.pkg.util.intstr.IntOrString", "io.k8s.apimachinery.pkg.api.resource.Quantity"}
# The volume sources a TextGenService may use: the restricted Pod Security Standard's, less `ephemeral` (its
# claim template embeds a whole ObjectMeta) and `image` (newer than 1.33); `hostPath` stays in the schema only so
# that the CRD's rule can refuse it by name instead of the API server silently pruning it.
VOLUME_SOURCES = ("configMap", "csi", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected", "secret")
REFUSED_VOLUME_SOURCES = ("hostPath",)
_KEEP = ("type", "format", "enum", "required", "minimum", "maximum", "pattern", "minLength", "maxLength")


@functools.cache
def _definitions() -> dict[str, Any]:
    import kubernetes_validate

    path = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local"
            / "_definitions.json")
    return json.loads(path.read_text())["$defs"]


def core_schema(kind: str) -> dict[str, Any]:
    """The structural schema of core/v1 `kind` (e.g. "Toleration")."""
    schema = _convert(_definitions()[CORE + kind])
    if kind in ("Volume", "VolumeMount"):  # a DNS label, as the API server checks on the Pod; bounds CEL's cost
        schema["properties"]["name"]["maxLength"] = 63
    if kind == "Volume":
        keep = {"name", *VOLUME_SOURCES, *REFUSED_VOLUME_SOURCES}
        schema["properties"] = {k: v for k, v in schema["properties"].items() if k in keep}
    return schema


def _convert(node: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    if depth > 24:
        raise ValueError("core/v1 schema nests too deep (a recursive type?)")
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True}
        return _convert(_definitions()[name], depth + 1)
    out: dict[str, Any] = {}
    for key in _KEEP:
        if key in node:
            out[key] = node[key]
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        out["type"] = types[0]
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _convert(v, depth + 1) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = _convert(node["additionalProperties"], depth + 1)
    if "items" in node:
        out["items"] = _convert(node["items"], depth + 1)
    if "format" in out and out["format"] not in ("int32", "int64", "byte", "date-time", "double", "float"):
        del out["format"]
    return out
