"""Generate the TextGenService CustomResourceDefinition from the pydantic models in spec.py.

`python -m textgen_operator.crd [PATH...]` writes the YAML to each PATH (stdout without one); `make manifests`
writes manifests/crd/ and the chart's crds/ copy, and tests/operator fails when the committed files drift.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from . import constants as C
from .spec import ROOT_RULES, TextGenServiceSpec, TextGenServiceStatus

# JSON-schema keys that carry over into a Kubernetes structural schema unchanged.
_KEEP = ("type", "description", "default", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
         "multipleOf", "format", "maxItems", "x-kubernetes-validations")


# Marks a core/v1 schema while converting (no defaults are made up inside it); removed from the result.
_CORE_MARK = "x-textgen-core-v1"


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, with $refs inlined and nullable unions flattened."""
    js = model.model_json_schema(by_alias=True, mode="validation")
    return _unmark(_convert(js, js.get("$defs", {})))


def _unmark(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _unmark(v) for k, v in node.items() if k != _CORE_MARK}
    if isinstance(node, list):
        return [_unmark(v) for v in node]
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "x-core-v1" in node:
        return _core_field(node)
    if "$ref" in node:
        target = _convert(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        # Annotations beside the $ref (a field's description) win over the model's own.
        return _ordered({**target, **{k: v for k, v in node.items() if k in _KEEP}})
    if "anyOf" in node:  # Optional[X]: keep X, the field is simply not required
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in schema: {node}")
        merged = {**_convert(options[0], defs), **{k: v for k, v in node.items() if k in _KEEP}}
        if merged.get("default", 0) is None:
            del merged["default"]
        return _ordered(merged)
    out: dict[str, Any] = {}
    for key in _KEEP:
        if key in node:
            out[key] = node[key]
    if "x-kubernetes-validations" in node:
        out["x-kubernetes-validations"] = [{"rule": v["rule"], "message": v["message"]}
                                           for v in node["x-kubernetes-validations"]]
    if "exclusiveMinimum" in node:  # JSON Schema 2020 number -> OpenAPI v3.0 boolean form
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "const" in node:
        out["enum"] = [node["const"]]
    if isinstance(node.get("additionalProperties"), dict):  # a map (dict[str, X]): no fixed properties
        out["type"] = "object"
        out["additionalProperties"] = _convert(node["additionalProperties"], defs)
    elif node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        required = set(node.get("required", []))
        out["properties"] = {}
        for name, sub in props.items():
            prop = _convert(sub, defs)
            if prop.get("type") == "object" and name not in required and "default" not in prop \
                    and _CORE_MARK not in prop:  # core/v1 objects (affinity) stay unset
                # An absent object gets its fields' defaults. Spelled out in full: the API server checks a
                # default against the schema (CEL rules included) without defaulting inside it first.
                prop["default"] = _defaults_of(prop)
            out["properties"][name] = _ordered(prop)
        if required:
            out["required"] = sorted(required)
    if node.get("type") == "array":
        out["items"] = _convert(node["items"], defs)
    return _ordered(out)


def volume_rules() -> list[dict[str, str]]:
    """The CEL rules on each of spec.cluster.pod.volumes: the restricted Pod Security Standard's types only."""
    from .core_schemas import REFUSED_VOLUME_SOURCES, VOLUME_SOURCES

    refused = [{"rule": f"!has(self.{src})",
                "message": f"{src} volumes are not allowed (the restricted Pod Security Standard's types only)"}
               for src in REFUSED_VOLUME_SOURCES]
    one = {"rule": "[" + ", ".join(f"has(self.{src})" for src in VOLUME_SOURCES) + "].filter(x, x).size() == 1",
           "message": f"a volume must use exactly one of {', '.join(VOLUME_SOURCES)}"}
    return [*refused, one]


def _core_field(node: dict[str, Any]) -> dict[str, Any]:
    """A pod customisation field: core/v1's schema of its kind (a list of them for a list field)."""
    from .core_schemas import core_schema

    kind = node["x-core-v1"]
    item = core_schema(kind)
    if kind == "Volume":
        item["x-kubernetes-validations"] = volume_rules()
    is_list = node.get("type") == "array"
    out = {"type": "array", "items": item} if is_list else item
    for key in ("description", "maxItems"):
        if key in node:
            out[key] = node[key]
    out[_CORE_MARK] = kind
    return _ordered(out)


def _defaults_of(schema: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop and _CORE_MARK not in prop:
            out[name] = _defaults_of(prop)
    return out


_ORDER = ("description", "type", "format", "enum", "default", "minimum", "exclusiveMinimum", "maximum", "multipleOf",
          "minLength", "maxLength", "maxItems", "pattern", "required", "properties", "additionalProperties", "items",
          "x-kubernetes-list-type",
          "x-kubernetes-list-map-keys", "x-kubernetes-validations")


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in sorted(d, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER))}


def status_schema() -> dict[str, Any]:
    schema = openapi_schema(TextGenServiceStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema["properties"]["conditions"] = _ordered(conditions)
    return schema


def build_crd() -> dict[str, Any]:
    spec = openapi_schema(TextGenServiceSpec)
    root = {
        "description": "TextGenService runs a GPT-2 text generation endpoint (Ray Serve) on a KubeRay cluster.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(),
        },
        "x-kubernetes-validations": [{"rule": r.cel, "message": r.message} for r in ROOT_RULES],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": C.CRD_NAME,
            "labels": {"app.kubernetes.io/name": "textgen-operator", "app.kubernetes.io/part-of": "textgen-operator"},
        },
        "spec": {
            "group": C.GROUP,
            "names": {
                "kind": C.KIND,
                "listKind": f"{C.KIND}List",
                "plural": C.PLURAL,
                "singular": C.SINGULAR,
                "shortNames": list(C.SHORT_NAMES),
                "categories": ["all", "textgen"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": C.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas",
                         "description": "Model replicas asked for (the initial count when autoscaling)."},
                        {"name": "Autoscaling", "type": "boolean", "jsonPath": ".spec.autoscaling.enabled"},
                        {"name": "Min", "type": "integer", "jsonPath": ".spec.autoscaling.minReplicas"},
                        {"name": "Max", "type": "integer", "jsonPath": ".spec.autoscaling.maxReplicas"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Status", "type": "string",
                         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def render() -> str:
    header = ("# Generated by `make manifests` (python -m textgen_operator.crd) from operator/textgen_operator/spec.py."
              " Do not edit.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    text = render()
    if not paths:
        sys.stdout.write(text)
    for p in paths:
        path = Path(p)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
