"""Offline chart tests that reach beyond the chart's templates: helm lint, every rendered object validated against
the Kubernetes OpenAPI schemas (kubernetes-validate) or our CRD, RBAC against the chart README's table, the example
values against the operator's own code, the values schema against values.yaml, the generated README, the chart's CRD
copy. What a template renders for given values is tested by helm-unittest (charts/textgen-operator/tests/*_test.yaml,
the chart world's convention); test_helm_unittest_suites_pass runs those suites here."""

from __future__ import annotations

import json
import re
import shutil
import tarfile

import pytest
import yaml

from tests.chart.chart_utils import (
    CHART,
    CHART_CRD_DIR,
    CI_VALUES,
    CLUSTER_SCOPED_RESOURCES,
    CRD_MANIFEST_DIR,
    TGS_API_VERSION,
    by_kind,
    chart_docs,
    documented_rbac,
    find_crd,
    helm,
    helm_unittest,
    load_docs,
    render_objects,
    tgs_schema_errors,
    validate_object,
    values_table,
)

VALUES_CASES = [None, *CI_VALUES]
VALUES_IDS = ["default", *[p.name for p in CI_VALUES]]
SUITES = sorted((CHART / "tests").glob("*_test.yaml"))


def values_args(path) -> list[str]:
    return [] if path is None else ["-f", str(path)]


# The operator's RBAC as the chart README documents it (its "RBAC" table). Nothing more may be granted.
NAMESPACED_RULES = {k: v for k, v in documented_rbac().items() if k not in CLUSTER_SCOPED_RESOURCES}
# Read-only and cluster-scoped in both modes: kopf's discovery of CRDs and its namespace scanning (kopf lists
# namespaces even when given exact names; tests/chart/test_cluster.py runs it with only these grants).
DISCOVERY_RULES = {k: v for k, v in documented_rbac().items() if k in CLUSTER_SCOPED_RESOURCES}
assert DISCOVERY_RULES == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
                           ("", "namespaces"): {"list", "watch"}}


def grants(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_ci_values_exist():
    names = {p.name for p in CI_VALUES}
    assert {"gpt2-values.yaml", "namespaced-values.yaml", "kind-values.yaml"} <= names, names


# The helm binary users run (helm-unittest renders with its own Helm library and does not lint).
@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_helm_lint(values):
    proc = helm("lint", "--strict", str(CHART), *values_args(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


# kubernetes-validate and the CRD live outside the chart: helm-unittest cannot check objects against them.
@pytest.mark.parametrize("args", [values_args(v) for v in VALUES_CASES] + [["--set", "textGenServices[0].name=plain"]],
                         ids=[*VALUES_IDS, "empty-spec"])
def test_rendered_objects_are_valid(args):
    objs = render_objects(*args)
    assert objs, "nothing rendered"
    for obj in objs:
        validate_object(obj)
    assert len(by_kind(objs, "Deployment")) == 1


def test_invalid_textgenservice_spec_fails_crd_validation():
    """The CRD check in test_rendered_objects_are_valid can fail: a wrong type and an unknown field do."""
    bad = {"apiVersion": TGS_API_VERSION, "kind": "TextGenService", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "noSuchField": 1}}
    errors = tgs_schema_errors(bad)
    assert any(e.startswith("spec/replicas") for e in errors), errors
    assert any("noSuchField" in e for e in errors), errors
    with pytest.raises(AssertionError):
        validate_object(bad)


def test_invalid_kubernetes_object_fails_validation():
    objs = render_objects()
    dep = by_kind(objs, "Deployment")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "often"
    with pytest.raises(AssertionError, match="Deployment"):
        validate_object(dep)


# The rules against the README's RBAC table (a file helm-unittest does not read); how the roles are bound is in
# tests/rbac_test.yaml.
def test_rbac_cluster_wide_is_the_contract():
    objs = render_objects()
    (role,) = by_kind(objs, "ClusterRole")
    assert grants(role) == {**NAMESPACED_RULES, **DISCOVERY_RULES}
    assert not by_kind(objs, "Role")


def test_rbac_limited_to_one_namespace():
    objs = render_objects("--set", "watchNamespace=apps")
    (role,) = by_kind(objs, "Role")
    assert grants(role) == NAMESPACED_RULES
    # Only read-only discovery (CRDs, namespaces) stays cluster-wide: nothing writable.
    (crole,) = by_kind(objs, "ClusterRole")
    assert grants(crole) == DISCOVERY_RULES


# In pytest: the operator's Python code is outside the chart (here and in the next two tests).
@pytest.mark.parametrize("values", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_example_textgenservices_pass_the_operators_own_checks(values):
    """Beyond the CRD schema: the operator's cross-field rules (validation.parse) accept every example spec."""
    from textgen_operator import validation

    for tgs in yaml.safe_load(values.read_text()).get("textGenServices", []):
        parsed, problems = validation.parse(tgs["name"], tgs.get("spec") or {})
        assert problems == [], (values.name, tgs["name"], problems)


def test_kind_textgenservice_fits_kind_nodes():
    """The e2e TextGenService asks for laptop-sized pods on nodes labelled like the kind workers."""
    from textgen_operator import builder

    kind = yaml.safe_load((CHART.parents[1] / "manifests" / "kind" / "kind-config.yaml").read_text())
    worker_labels = [n["labels"] for n in kind["nodes"] if n["role"] == "worker"]
    (tgs,) = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())["textGenServices"]
    cluster = builder.build_rayservice(tgs["name"], "textgen-system", tgs["spec"])["spec"]["rayClusterConfig"]
    cpus = int(cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
    for group in cluster["workerGroupSpecs"]:
        selector = group["template"]["spec"].get("nodeSelector", {})
        assert all(any(lbl.get(k) == v for lbl in worker_labels) for k, v in selector.items()), selector
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        cpus += int(requests["cpu"]) * group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert cpus <= 4, f"the kind e2e cluster asks for {cpus} CPUs"


def _walk_schema_and_values(schema: dict, values: dict, path: str = "") -> list[str]:
    problems = []
    props = schema.get("properties", {})
    for key, value in values.items():
        if key not in props:
            problems.append(f"{path}{key}: in values.yaml but not in values.schema.json")
            continue
        if "description" not in props[key]:
            problems.append(f"{path}{key}: no description in values.schema.json")
        if isinstance(value, dict) and props[key].get("properties") and props[key].get("additionalProperties") is False:
            problems += _walk_schema_and_values(props[key], value, f"{path}{key}.")
    for key in props:
        if key not in values and key != "global":
            problems.append(f"{path}{key}: in values.schema.json but not in values.yaml")
    return problems


# values.schema.json is hand-written (README "The values schema"): this keeps it and values.yaml key for key.
def test_values_schema_matches_values_yaml():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _walk_schema_and_values(schema, values) == []


# In pytest: manifests/crd is outside the chart.
def test_chart_crd_equals_manifests_crd():
    chart_crd = find_crd(CHART_CRD_DIR)
    manifest_crd = find_crd(CRD_MANIFEST_DIR)
    assert load_docs(chart_crd.read_text()) == load_docs(manifest_crd.read_text()), (
        f"{chart_crd} differs from {manifest_crd}: run `make manifests`")
    # Helm installs crds/ before the templates and never deletes it on uninstall; nothing in templates/ may
    # render a CRD (that one would be deleted with the release).
    for values in VALUES_CASES:
        assert not by_kind(render_objects(*values_args(values)), "CustomResourceDefinition")


# In pytest: Chart.yaml and pyproject.toml are no template output.
def test_kuberay_is_not_a_hard_dependency():
    """The chart lints, renders and installs offline: KubeRay is installed by `make kuberay-install`."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert not chart.get("dependencies")
    assert chart["kubeVersion"].startswith(">=")


# In pytest: kopf's and the operator's command-line parsers are outside the chart.
@pytest.mark.parametrize("extra,expected", [
    ([], ["--all-namespaces"]),
    (["--set", "watchNamespace=apps", "--set", "operator.verbose=true"], ["--namespace", "apps", "--verbose"]),
], ids=["cluster-wide", "one-namespace"])
def test_container_args_are_accepted_by_the_operator_cli(extra, expected):
    """The Deployment's command line parses with `python -m textgen_operator` and, through it, kopf's `run`."""
    from kopf.cli import main as kopf_main
    from textgen_operator.__main__ import kopf_args

    (container,) = by_kind(render_objects(*extra), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "textgen_operator"]
    args = kopf_args(container["args"])
    assert args[:2] == ["run", "--standalone"]
    for flag in expected:
        assert flag in args, args
    run = kopf_main.get_command(kopf_main.make_context("kopf", list(args)), "run")
    params = run.make_context("run", args[1:]).params
    assert params["standalone"] is True
    assert params["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    assert params["clusterwide"] is (not extra)
    assert params["namespaces"] == (("apps",) if extra else ())
    assert params["log_format"].name == "JSON"


def test_app_version_is_the_projects_version():
    """appVersion tags the operator image (operator/pyproject.toml) and the serve image (textgen_operator's default;
    the root pyproject.toml): both distributions' version, which tests/deps/test_dists.py keeps one."""
    import tomllib

    root = CHART.parents[1]
    versions = {tomllib.loads((root / d / "pyproject.toml").read_text())["project"]["version"] for d in (".", "operator")}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert versions == {chart["appVersion"]}


# The chart tools: helm-unittest suites and the helm-docs README (hack/chart-tools, `make chart-tools`).
def test_helm_unittest_suites_pass():
    """`make test` runs the chart's helm-unittest suites through this test: every suite ran and passed."""
    assert len(SUITES) >= 6, SUITES
    proc = helm_unittest(CHART)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for suite in SUITES:
        assert re.search(rf"PASS .*tests/{re.escape(suite.name)}", proc.stdout), (suite.name, proc.stdout)
    passed, total = map(int, re.search(r"Tests:\s+(\d+) passed, (\d+) total", proc.stdout).groups())
    assert passed == total >= 30, proc.stdout


def test_helm_unittest_fails_when_a_template_breaks(tmp_path):
    """The suites can fail: a copy of the chart whose Deployment allows two operators at once fails its test."""
    chart = shutil.copytree(CHART, tmp_path / "textgen-operator")
    deployment = chart / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("type: Recreate", "type: RollingUpdate"))
    proc = helm_unittest(chart)
    assert proc.returncode != 0, proc.stdout
    assert re.search(r"FAIL .*tests/deployment_test\.yaml", proc.stdout), proc.stdout
    assert "- runs one operator at a time" in proc.stdout, proc.stdout


def test_packaged_chart_leaves_out_the_test_suites_and_docs_template(tmp_path):
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("textgen-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "textgen-operator/templates/tests/test-generate.yaml" in names  # the `helm test` pod stays
    assert "textgen-operator/README.md" in names
    assert not [n for n in names if n.startswith("textgen-operator/tests/") or n.endswith(".gotmpl")], names


def test_readme_is_generated_by_helm_docs():
    """README.md is README.md.gotmpl plus the values table helm-docs makes from values.yaml: `make chart-docs`."""
    assert chart_docs(CHART) == (CHART / "README.md").read_text(), "README.md is stale: run `make chart-docs`"


def test_every_value_is_documented():
    """Every row of the generated values table has a description: a `# --` comment on the key or an enclosing key."""
    rows = values_table((CHART / "README.md").read_text())
    assert len(rows) > 40 and "helmTest.image.tag" in rows
    assert [key for key, description in rows.items() if not description] == []


def test_an_undocumented_value_shows_in_the_table_without_a_description(tmp_path):
    chart = shutil.copytree(CHART, tmp_path / "textgen-operator")
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\nundocumentedKey: 1\n")
    rows = values_table(chart_docs(chart))
    assert [key for key, description in rows.items() if not description] == ["undocumentedKey"]
