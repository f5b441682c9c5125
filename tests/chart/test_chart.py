"""Offline chart tests: helm lint, rendering with default and example values, every object validated against the
Kubernetes OpenAPI schemas (kubernetes-validate) or our CRD, the values schema, RBAC against the chart README's
table, and the chart's CRD copy."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .chart_utils import (
    CHART,
    CHART_CRD_DIR,
    CI_VALUES,
    CLUSTER_SCOPED_RESOURCES,
    CRD_MANIFEST_DIR,
    TGS_API_VERSION,
    by_kind,
    documented_rbac,
    find_crd,
    helm,
    load_docs,
    render,
    render_objects,
    tgs_schema_errors,
    validate_object,
)

VALUES_CASES = [None, *CI_VALUES]
VALUES_IDS = ["default", *[p.name for p in CI_VALUES]]


def values_args(path) -> list[str]:
    return [] if path is None else ["-f", str(path)]


# The operator's RBAC as the chart README documents it (its "RBAC" table). Nothing more may be granted.
NAMESPACED_RULES = {k: v for k, v in documented_rbac().items() if k not in CLUSTER_SCOPED_RESOURCES}
# Read-only and cluster-scoped in both modes: kopf's discovery of CRDs and its namespace scanning (kopf lists
# namespaces even when given exact names; tests/chart/test_chart_cluster.py runs it with only these grants).
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


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_helm_lint(values):
    proc = helm("lint", "--strict", str(CHART), *values_args(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_rendered_objects_are_valid(values):
    objs = render_objects(*values_args(values))
    assert objs, "nothing rendered"
    for obj in objs:
        validate_object(obj)
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert labels.get(key), f"{obj['kind']}/{obj['metadata']['name']} lacks label {key}"
    deployments = by_kind(objs, "Deployment")
    assert len(deployments) == 1


def test_default_render_kinds():
    kinds = sorted(o["kind"] for o in render_objects())
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]


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


def test_deployment_is_hardened():
    dep = by_kind(render_objects(), "Deployment")[0]
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "textgen_operator"]
    assert "--all-namespaces" in container["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["serviceAccountName"] == "textgen-textgen-operator"
    assert container["image"] == "textgen-operator:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def test_rbac_cluster_wide_is_the_contract():
    objs = render_objects()
    (role,) = by_kind(objs, "ClusterRole")
    assert grants(role) == {**NAMESPACED_RULES, **DISCOVERY_RULES}
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    (sa,) = by_kind(objs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "textgen-system"}]
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")


def test_rbac_limited_to_one_namespace():
    objs = render_objects("--set", "watchNamespace=apps")
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == "apps"
    assert grants(role) == NAMESPACED_RULES
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["metadata"]["namespace"] == "apps"
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == "textgen-system"
    # Only read-only discovery (CRDs, namespaces) stays cluster-wide: nothing writable.
    (crole,) = by_kind(objs, "ClusterRole")
    assert grants(crole) == DISCOVERY_RULES
    (cbinding,) = by_kind(objs, "ClusterRoleBinding")
    assert cbinding["roleRef"]["name"] == crole["metadata"]["name"]
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=apps" in args and "--all-namespaces" not in args


def test_rbac_and_service_account_can_be_turned_off():
    objs = render_objects("--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                          "--set", "serviceAccount.name=preexisting", "--set-json", "allowedImages=[]")
    assert sorted(o["kind"] for o in objs) == ["Deployment"]
    assert objs[0]["spec"]["template"]["spec"]["serviceAccountName"] == "preexisting"


def test_textgenservices_from_values_and_helm_test_pod():
    objs = render_objects("-f", str(CHART / "ci" / "gpt2-values.yaml"), namespace="demo")
    (tgs,) = by_kind(objs, "TextGenService")
    assert tgs["apiVersion"] == TGS_API_VERSION
    assert tgs["metadata"]["name"] == "gpt2" and tgs["metadata"]["namespace"] == "demo"
    assert tgs["spec"]["replicas"] == 2
    assert tgs_schema_errors(tgs) == []
    (pod,) = by_kind(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    repo, tag = container["image"].rsplit(":", 1)
    assert repo == "curlimages/curl" and re.fullmatch(r"\d+\.\d+\.\d+", tag), container["image"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["URL"] == "http://gpt2-serve-svc.demo.svc:8000/generate"
    assert "generated_text" in container["args"][0]


def test_textgenservice_with_empty_spec_takes_crd_defaults():
    objs = render_objects("--set", "textGenServices[0].name=plain", "--set", "helmTest.enabled=false")
    (tgs,) = by_kind(objs, "TextGenService")
    assert tgs["spec"] == {}
    assert not by_kind(objs, "Pod")
    assert tgs_schema_errors(tgs) == []


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


def test_no_test_pod_without_a_textgenservice():
    assert not by_kind(render_objects(), "Pod")


def test_notes_have_copy_paste_next_steps():
    proc = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "apps",
                "-f", str(CHART / "ci" / "gpt2-values.yaml"))
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n apps get tgs gpt2" in notes
    assert "kubectl -n apps port-forward svc/gpt2-serve-svc 8000:8000" in notes
    assert 'curl "http://127.0.0.1:8000/generate?query=Hello%20friend%2C%20how"' in notes
    assert "helm test demo -n apps" in notes
    assert "make kuberay-install" in notes
    bare = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "apps").stdout
    assert "kubectl -n apps get tgs" in bare.split("NOTES:", 1)[1]


BAD_VALUES = [
    (["--set", "image.pullPolicy=Sometimes"],
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    (["--set", "operator.healthPort=80"], "at '/operator/healthPort': minimum: got 80, want 1,024"),
    (["--set", "operator.logFormat=xml"], "at '/operator/logFormat': value must be one of 'plain', 'full', 'json'"),
    (["--set", "watchNamespace=Team_A"], "at '/watchNamespace': 'Team_A' does not match pattern"),
    (["--set", "serviceAccount.create=yes"], "at '/serviceAccount/create': got string, want boolean"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot': value must be true"),
    (["--set", "securityContext.privileged=true"], "at '/securityContext/privileged': value must be false"),
    (["--set", "resources.limits.cpu=lots"], "at '/resources/limits/cpu': 'lots' does not match pattern"),
    (["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed"),
    (["--set", "textGenServices[0].spec.replicas=2"], "at '/textGenServices/0': missing property 'name'"),
    (["--set", "textGenServices[0].name=GPT2"], "at '/textGenServices/0/name': 'GPT2' does not match pattern"),
    (["--set", "textGenServices[0].name=" + "a" * 48], "at '/textGenServices/0/name': maxLength: got 48, want 47"),
    (["--set", "textGenServices[0].name=gpt2", "--set", "textGenServices[0].replicas=2"],
     "at '/textGenServices/0': additional properties 'replicas' not allowed"),
    (["--set", "textGenServices[0].name=a", "--set", "textGenServices[1].name=a"],
     'textGenServices: "textgen-system/a" is listed twice'),
    (["--set", "watchNamespace=apps", "--set", "textGenServices[0].name=a"],
     'textGenServices: "textgen-system/a" would not be seen by the operator, which watches only namespace "apps"'),
    (["--set", "image.tag=latest"], "image.tag: `latest` is not allowed; pin a version"),
    (["--set", "helmTest.image.tag=latest"], "helmTest.image.tag: `latest` is not allowed; pin a version"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required when serviceAccount.create is false"),
]


@pytest.mark.parametrize("args,message", BAD_VALUES, ids=[" ".join(a[1::2]) for a, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(args, message):
    proc = render(*args, check=False)
    assert proc.returncode != 0, f"helm accepted {args}:\n{proc.stdout[:500]}"
    assert message in proc.stderr, proc.stderr


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


def test_values_schema_matches_values_yaml():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _walk_schema_and_values(schema, values) == []


def test_every_value_is_documented():
    """Every key in values.yaml has a `# --` comment, on itself or on an enclosing key (helm-docs style)."""
    keys = []  # (indent, key, documented)
    pending_doc = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending_doc = True
            continue
        if stripped.startswith("#"):
            continue
        if not stripped:
            pending_doc = False
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if m:
            keys.append((len(m.group(1)), m.group(2), pending_doc))
        pending_doc = False
    undocumented = []
    stack: list[tuple[int, str, bool]] = []
    children: dict[int, list[int]] = {}
    for i, (indent, key, doc) in enumerate(keys):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else None
        children.setdefault(parent, []).append(i)
        stack.append((indent, i, doc))

    def ok(i: int, ancestor_doc: bool) -> bool:
        indent, key, doc = keys[i]
        kids = children.get(i, [])
        if doc or ancestor_doc:
            return all(ok(k, True) for k in kids)
        if not kids:
            undocumented.append(key)
            return False
        return all([ok(k, False) for k in kids])

    for i in children.get(None, []):
        ok(i, False)
    assert len(keys) > 40
    assert undocumented == []


def test_chart_crd_equals_manifests_crd():
    chart_crd = find_crd(CHART_CRD_DIR)
    manifest_crd = find_crd(CRD_MANIFEST_DIR)
    assert load_docs(chart_crd.read_text()) == load_docs(manifest_crd.read_text()), (
        f"{chart_crd} differs from {manifest_crd}: run `make manifests`")
    # Helm installs crds/ before the templates and never deletes it on uninstall; nothing in templates/ may
    # render a CRD (that one would be deleted with the release).
    for values in VALUES_CASES:
        assert not by_kind(render_objects(*values_args(values)), "CustomResourceDefinition")


def test_kuberay_is_not_a_hard_dependency():
    """The chart lints, renders and installs offline: KubeRay is installed by `make kuberay-install`."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert not chart.get("dependencies")
    assert chart["kubeVersion"].startswith(">=")


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
    """appVersion tags the operator image (and the serve image: textgen_operator's default); it is the package's."""
    import tomllib

    project = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]
