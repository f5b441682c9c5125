"""`allowedImages`: the chart's ValidatingAdmissionPolicy that lets a TextGenService run only images with an allowed
prefix. Rendering checks here; the cluster test has the real API server refuse and admit TextGenServices."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.chart.chart_utils import ROOT, by_kind, render, render_objects
from tests.support import wait_for

POLICY = "templates/image-policy.yaml"


def policy_objects(*args: str, **kw) -> tuple[dict, dict]:
    objs = render_objects("--show-only", POLICY, *args, **kw)
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def test_default_allows_the_default_serve_image_only():
    from textgen_operator.constants import DEFAULT_IMAGE

    policy, binding = policy_objects()
    (rule,) = policy["spec"]["validations"]
    assert '["textgen-serve:"].exists(p, variables.image.startsWith(p))' in rule["expression"]
    assert DEFAULT_IMAGE.startswith("textgen-serve:")
    assert policy["spec"]["failurePolicy"] == "Fail" and rule["reason"] == "Forbidden"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}


def test_watch_namespace_scopes_the_binding_and_an_empty_list_renders_nothing():
    _, binding = policy_objects("--set", "watchNamespace=apps")
    assert binding["spec"]["matchResources"]["namespaceSelector"] == \
        {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}
    proc = render("--show-only", POLICY, "--set-json", "allowedImages=[]", check=False)
    assert proc.returncode != 0 and "could not find template" in proc.stderr


@pytest.mark.parametrize("prefix", ["registry.example.com/textgen-serve", "textgen-serve", "x:' || true || '"])
def test_prefixes_that_could_match_longer_names_are_rejected_by_the_schema(prefix):
    proc = render("--set-json", f"allowedImages={json.dumps([prefix])}", check=False)
    assert proc.returncode != 0 and "allowedImages" in proc.stderr


def test_the_operator_gets_the_same_list_and_refuses_with_the_same_message(monkeypatch):
    from textgen_operator.image_policy import ALLOWED_IMAGES_ENV
    from textgen_operator.validation import InvalidSpec, validate

    (dep,) = by_kind(render_objects("--set-json", 'allowedImages=["registry.example.com/team/"]'), "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env[ALLOWED_IMAGES_ENV]) == ["registry.example.com/team/"]
    monkeypatch.setenv(ALLOWED_IMAGES_ENV, env[ALLOWED_IMAGES_ENV])
    validate("ok", {"cluster": {"image": "registry.example.com/team/serve:1"}})
    with pytest.raises(InvalidSpec) as info:
        validate("bad", {})  # the CRD's default image is not in this list
    assert "spec.cluster.image textgen-serve:0.1.0 is not allowed: it must start with one of " \
        "registry.example.com/team/ (the chart value allowedImages)" in info.value.problems
    monkeypatch.setenv(ALLOWED_IMAGES_ENV, "[]")
    validate("any", {"cluster": {"image": "elsewhere.example/serve:1"}})


def tgs(name: str, image: str | None = None) -> dict:
    spec = {"cluster": {"image": image}} if image else {}
    return {"apiVersion": "textgen.dev/v1alpha1", "kind": "TextGenService", "metadata": {"name": name}, "spec": spec}


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_the_api_server_refuses_images_outside_the_list(kubectl, namespace):
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/textgenservices.textgen.dev")

    def apply(doc: dict, *flags: str):
        return kubectl("apply", "-n", namespace, *flags, "-f", "-", input=json.dumps(doc), check=False)

    # Made before the policy: a TextGenService with an image the policy will not allow.
    assert apply(tgs("old", "elsewhere.example/serve:1")).returncode == 0
    # The policy, bound to this test's namespace only (watchNamespace), so that other tests are not affected.
    release = f"ip-{uuid.uuid4().hex[:8]}"
    text = render("--show-only", POLICY, "--set", f"watchNamespace={namespace}",
                  "--set-json", 'allowedImages=["textgen-serve:", "registry.example.com/team/"]',
                  release=release, namespace=namespace).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        refused = wait_for(lambda: (lambda p: p if p.returncode != 0 else None)(
            apply(tgs("bad", "elsewhere.example/serve:1"), "--dry-run=server")), "the policy to take effect", timeout=60)
        assert "spec.cluster.image elsewhere.example/serve:1 is not allowed" in refused.stderr, refused.stderr
        assert "forbidden" in refused.stderr.lower()
        for image in ("textgen-serve-evil:1", "docker.io/library/textgen-serve:1", "registry.example.com/teams/x:1"):
            assert apply(tgs("bad", image), "--dry-run=server").returncode != 0, image
        for image in (None, "textgen-serve:0.2.0", "registry.example.com/team/serve@sha256:" + "0" * 64):
            proc = apply(tgs("good", image), "--dry-run=server")
            assert proc.returncode == 0, (image, proc.stderr)
        # The grandfathered one can still be managed (the operator patches it) but not moved to another such image.
        old = kubectl("get", "tgs", "old", "-n", namespace, "-o", "json").stdout
        assert kubectl("label", "tgs", "old", "-n", namespace, "touched=yes", check=False).returncode == 0, old
        moved = kubectl("patch", "tgs", "old", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"cluster": {"image": "elsewhere.example/serve:2"}}}', check=False)
        assert moved.returncode != 0 and "is not allowed" in moved.stderr
        fixed = kubectl("patch", "tgs", "old", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"cluster": {"image": "textgen-serve:0.1.0"}}}', check=False)
        assert fixed.returncode == 0, fixed.stderr
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
