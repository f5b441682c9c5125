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
         "multipleOf", "format", "x-kubernetes-validations")


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, with $refs inlined and nullable unions flattened."""
    js = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(js, js.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
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
    if node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        required = set(node.get("required", []))
        out["properties"] = {}
        for name, sub in props.items():
            prop = _convert(sub, defs)
            if prop.get("type") == "object" and name not in required and "default" not in prop:
                # An absent object gets its fields' defaults. Spelled out in full: the API server checks a
                # default against the schema (CEL rules included) without defaulting inside it first.
                prop["default"] = _defaults_of(prop)
            out["properties"][name] = _ordered(prop)
        if required:
            out["required"] = sorted(required)
    if node.get("type") == "array":
        out["items"] = _convert(node["items"], defs)
    return _ordered(out)


def _defaults_of(schema: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop:
            out[name] = _defaults_of(prop)
    return out


_ORDER = ("description", "type", "format", "enum", "default", "minimum", "exclusiveMinimum", "maximum", "multipleOf",
          "minLength", "maxLength", "pattern", "required", "properties", "items", "x-kubernetes-list-type",
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
