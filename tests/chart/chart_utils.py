"""Helpers for the chart tests: find helm and the chart tools, render the chart, load the CRD, validate objects
offline."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "bin"
CHART = ROOT / "charts" / "textgen-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CRD_MANIFEST_DIR = ROOT / "manifests" / "crd"
CHART_CRD_DIR = CHART / "crds"
CHART_TOOLS = ROOT / "hack" / "chart-tools"
# helm-unittest is installed here as a Helm plugin (hack/chart-tools/build.sh); helm finds it through HELM_PLUGINS.
HELM_PLUGINS_DIR = ROOT / ".cache" / "helm-plugins"
# Kubernetes versions whose OpenAPI schemas rendered objects are validated against (kubernetes-validate): the
# kind node image's (the oldest we deploy to) and the local control plane's (hack/cluster: 1.36).
K8S_SCHEMA_VERSIONS = ("1.33.0", "1.36.0")
TGS_API_VERSION = "textgen.dev/v1alpha1"
TGS_KIND = "TextGenService"


@functools.lru_cache(maxsize=None)
def helm_binary() -> str:
    """helm from .cache/bin (`make tools`), extracting it with the project's own tool when missing."""
    if not (BIN / "helm").exists():
        tools = ROOT / "hack" / "cluster" / "tools.py"
        if tools.exists():
            subprocess.run([sys.executable, str(tools), "--bin", str(BIN)], check=True)
    if (BIN / "helm").exists():
        return str(BIN / "helm")
    found = shutil.which("helm")
    if not found:
        raise RuntimeError("helm not found: run `make tools` (extracts it into .cache/bin)")
    return found


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.lru_cache(maxsize=None)
def chart_tools() -> None:
    """helm-unittest and helm-docs at the versions hack/chart-tools/go.mod pins (`make chart-tools`): built once per
    machine, then only copied into .cache, so running it per session also picks up a version change."""
    proc = subprocess.run([str(CHART_TOOLS / "build.sh")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "BIN": str(BIN), "HELM_PLUGINS_DIR": str(HELM_PLUGINS_DIR)})
    if proc.returncode != 0:
        raise RuntimeError(f"hack/chart-tools/build.sh exited {proc.returncode}:\n{proc.stderr}")


def helm_unittest(chart: Path, *args: str) -> subprocess.CompletedProcess:
    """`helm unittest` on a chart (its tests/*_test.yaml suites); the caller checks the exit status."""
    chart_tools()
    return helm("unittest", *args, str(chart), check=False,
                env={"HELM_PLUGINS": str(HELM_PLUGINS_DIR)})


def chart_docs(chart: Path) -> str:
    """The README helm-docs makes for a chart from its README.md.gotmpl and values.yaml (not written)."""
    chart_tools()
    proc = subprocess.run([str(CHART_TOOLS / "chart-docs.sh"), str(chart), "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def values_table(readme: str) -> dict[str, str]:
    """The README's values table (helm-docs' `| Key | Type | Default | Description |`): key -> description."""
    section = readme.split("\n## Values", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] not in ("Key", "") and not cells[0].startswith("-"):
            rows[cells[0]] = cells[-1]
    return rows


def render(*args: str, release: str = "textgen", namespace: str = "textgen-system",
           check: bool = True) -> subprocess.CompletedProcess:
    return helm("template", release, str(CHART), "--namespace", namespace, *args, check=check)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render_objects(*args: str, **kw: Any) -> list[dict[str, Any]]:
    return load_docs(render(*args, **kw).stdout)


def by_kind(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def find_crd(folder: Path) -> Path:
    """The TextGenService CRD file in a folder (manifests/crd or the chart's crds/)."""
    for path in sorted(folder.glob("*.y*ml")):
        for doc in load_docs(path.read_text()):
            if doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == TGS_KIND:
                return path
    raise AssertionError(f"no TextGenService CRD in {folder.relative_to(ROOT)} (the operator area's `make manifests`)")


@functools.lru_cache(maxsize=None)
def crd() -> dict[str, Any]:
    path = find_crd(CRD_MANIFEST_DIR)
    return next(d for d in load_docs(path.read_text()) if d.get("kind") == "CustomResourceDefinition")


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as the API server applies it with field validation Strict (kubectl's and Helm's default):
    unknown fields are errors, except under x-kubernetes-preserve-unknown-fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for key, value in node.items():
                if key != "x-kubernetes-validations":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


def tgs_schema_errors(obj: dict[str, Any]) -> list[str]:
    """Validate a TextGenService against the served version's openAPIV3Schema (CEL rules are checked by the
    API server in the cluster tests, not here)."""
    import jsonschema

    group, version = obj["apiVersion"].split("/")
    spec = crd()["spec"]
    assert spec["group"] == group, (spec["group"], group)
    served = {v["name"]: v for v in spec["versions"] if v.get("served")}
    assert version in served, f"{obj['apiVersion']} is not served by the CRD (served: {sorted(served)})"
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    # metadata is checked by the API server's own rules; keep only spec/status/apiVersion/kind here.
    schema.get("properties", {}).pop("metadata", None)
    schema.pop("additionalProperties", None)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


def validate_object(obj: dict[str, Any]) -> None:
    """Validate one rendered object offline: Kubernetes kinds with kubernetes-validate (strict: unknown fields
    fail), TextGenServices against our CRD."""
    if obj.get("kind") == TGS_KIND:
        errors = tgs_schema_errors(obj)
        assert not errors, f"TextGenService {obj['metadata']['name']}: {errors}"
        return
    import kubernetes_validate

    for version in K8S_SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} (Kubernetes {version}): "
                                 f"{exc.message} at {'/'.join(map(str, exc.path))}") from exc


# kopf's discovery rules: cluster-scoped, so they stay in a ClusterRole even when the operator watches one namespace.
CLUSTER_SCOPED_RESOURCES = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}


def documented_rbac() -> dict[tuple[str, str], set[str]]:
    """The operator's RBAC as the chart README's "RBAC" table documents it: (apiGroup, resource) -> verbs."""
    section = (CHART / "README.md").read_text().split("\n## RBAC", 1)[1].split("\n## ", 1)[0]
    rules: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`"):
            group = "" if cells[0] == "(core)" else cells[0].strip("`")
            rules[(group, cells[1].strip("`"))] = {v.strip() for v in cells[2].split(",")}
    assert len(rules) >= 10, section
    return rules
