"""Integration: the CRD, the operator (in-process, kopf's KopfRunner) and the real KubeRay operator on a real API
server (tests/k8s_fixtures.py: the local control plane, or $KUBECONFIG with TEXTGEN_USE_EXISTING_CLUSTER=1).

There is no scheduler or kubelet on the local control plane: Ray pods stay Pending, so these tests check objects
(RayService, RayCluster, status, garbage collection), never traffic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import textgen_contract as SC
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from textgen_operator import constants as C
from textgen_operator import handlers
from textgen_operator.builder import build_rayservice, worker_bounds
from textgen_operator.spec import TextGenServiceSpec

from serve_app.run_local import free_port
from tests.operator.tgs_common import CRD_PATH, GOLDEN_DIR, ROOT, RULE_CASES, SAMPLES, create_tgs, get, get_tgs, load_sample
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]




# --- helpers -----------------------------------------------------------------------------------------------------------


def rayclusters(api, namespace: str, name: str) -> list[dict]:
    items = api.list_namespaced_custom_object(
        C.RAY_GROUP, "v1", namespace, C.RAYCLUSTER_PLURAL,
        label_selector=f"ray.io/originated-from-cr-name={name}")["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def serve_config(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def model_deployment(rs: dict) -> dict:
    return serve_config(rs)["applications"][0]["deployments"][0]


def one_raycluster(api, namespace: str, name: str) -> dict:
    clusters = wait_for(lambda: rayclusters(api, namespace, name), f"KubeRay to create a RayCluster for {name}")
    assert len(clusters) == 1, [c["metadata"]["name"] for c in clusters]
    return clusters[0]


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("golden", sorted(GOLDEN_DIR.glob("*.yaml")), ids=lambda p: p.name.split(".")[0])
def test_golden_rayservices_pass_kuberays_crd_schema(kubectl, namespace, golden):
    """A strict server-side dry run against KubeRay's installed CRD: unknown or mistyped fields fail."""
    doc = yaml.safe_load(golden.read_text())
    doc["metadata"]["namespace"] = namespace
    proc = kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
                   input=yaml.safe_dump(doc))
    assert "serverside-applied" in proc.stdout


def test_invalid_specs_are_rejected_with_their_messages(api, namespace, crd_installed):
    for case, (spec, message) in RULE_CASES.items():
        doc = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "bad"}, "spec": spec}
        with pytest.raises(ApiException) as info:
            api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, doc, dry_run="All")
        assert info.value.status == 422, case
        assert message in json.loads(info.value.body)["message"], (case, info.value.body)
    long_name = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "a" * 48}, "spec": {}}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, long_name, dry_run="All")
    assert "metadata.name must be at most 47 characters" in info.value.body
    dotted = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "gpt2.v1"}, "spec": {}}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, dotted, dry_run="All")
    assert "metadata.name must be a DNS-1035 label" in info.value.body
    schema_bad = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "bad"},
                  "spec": {"replicas": 0, "cluster": {"nodeType": "t2.micro"}}}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, schema_bad, dry_run="All")
    assert "spec.replicas" in info.value.body and "spec.cluster.nodeType" in info.value.body


def test_defaults_are_filled_in_by_the_api_server(api, namespace, crd_installed):
    doc = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "defaults"}, "spec": {}}
    created = api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, doc, dry_run="All")
    spec = created["spec"]
    # autoscaling.enabled and its bounds stay unset: unset bounds are what keeps autoscaling off (spec.py)
    assert spec["replicas"] == 1 and not {"enabled", "minReplicas", "maxReplicas"} & set(spec["autoscaling"])
    assert spec["cluster"]["nodeType"] == "m5.4xlarge" and spec["cluster"]["image"] == C.DEFAULT_IMAGE
    assert spec["serving"]["maxBatchSize"] == SC.MAX_BATCH_SIZE.default and spec["model"]["name"] == "gpt2"
    # what the API server defaults is what the operator's model defaults to
    assert TextGenServiceSpec.model_validate(spec) == TextGenServiceSpec.model_validate({})


def test_samples_become_rayservices_and_rayclusters(api, kubectl, namespace, run_operator):
    with run_operator():
        for path in SAMPLES:
            create_tgs(api, namespace, yaml.safe_load(path.read_text()))
        for path in SAMPLES:
            doc = yaml.safe_load(path.read_text())
            name = doc["metadata"]["name"]
            spec = TextGenServiceSpec.model_validate(doc["spec"])
            rs = wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), f"RayService {name}")
            tgs = get_tgs(api, namespace, name)
            (owner,) = rs["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
                (C.KIND, name, tgs["metadata"]["uid"], True)
            want = build_rayservice(name, namespace, spec, generation=tgs["metadata"]["generation"])
            assert rs["spec"]["serveConfigV2"] == want["spec"]["serveConfigV2"]
            # the API server adds KubeRay's CRD defaults (e.g. numOfHosts, port protocol): everything we set is there
            assert handlers.is_subset(want["spec"]["rayClusterConfig"], rs["spec"]["rayClusterConfig"])

            cluster = one_raycluster(api, namespace, name)
            (group,) = cluster["spec"]["workerGroupSpecs"]
            assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == worker_bounds(spec)
            assert cluster["spec"]["enableInTreeAutoscaling"] is spec.autoscaling.enabled
            assert group["template"]["spec"]["nodeSelector"] == {C.NODE_TYPE_LABEL: spec.cluster.node_type}

            status = wait_for(lambda: (get_tgs(api, namespace, name).get("status") or {}).get("conditions") and
                              get_tgs(api, namespace, name)["status"], f"status of {name}")
            assert status["rayServiceName"] == name
            assert status["url"] == f"http://{name}-serve-svc.{namespace}.svc:8000"
            assert status["replicas"] == spec.replicas
            assert status["observedGeneration"] == tgs["metadata"]["generation"]
            assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
        table = kubectl("get", "tgs", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:4] == ["NAME", "REPLICAS", "AUTOSCALING", "MIN"] and "AGE" in header
    assert "gpt2-seed-scale" in table and "56" in table


def create_sample(api, namespace: str, sample: str) -> tuple[str, dict]:
    """Create a sample TextGenService; its name and the RayService the operator made for it."""
    doc = load_sample(sample)
    name = doc["metadata"]["name"]
    create_tgs(api, namespace, doc)
    return name, wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")


def test_replica_changes_apply_in_place_and_kubectl_scale_works(api, kubectl, namespace, run_operator):
    with run_operator():
        name, rs = create_sample(api, namespace, "fixed")
        assert model_deployment(rs)["num_replicas"] == 4
        first = one_raycluster(api, namespace, name)["metadata"]["uid"]

        api.patch_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, name, {"spec": {"replicas": 6}})
        wait_for(lambda: model_deployment(get(api, namespace, C.RAYSERVICE_PLURAL, name)).get("num_replicas") == 6,
                 "serveConfigV2 with 6 replicas")

        kubectl("scale", "-n", namespace, f"tgs/{name}", "--replicas=3")
        assert get_tgs(api, namespace, name)["spec"]["replicas"] == 3
        wait_for(lambda: model_deployment(get(api, namespace, C.RAYSERVICE_PLURAL, name)).get("num_replicas") == 3,
                 "serveConfigV2 with 3 replicas after kubectl scale")
        wait_for(lambda: (get_tgs(api, namespace, name).get("status") or {}).get("replicas") == 3,
                 "status.replicas to follow kubectl scale")
        scale = json.loads(kubectl("get", "--raw",
                                   f"/apis/{C.GROUP}/{C.VERSION}/namespaces/{namespace}/{C.PLURAL}/{name}/scale").stdout)
        assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
        assert scale["status"]["selector"] == f"{C.LABEL_SERVICE}={name},ray.io/node-type=worker"

        # KubeRay reconciles every ~2 s (it writes no RayService status while no head pod is ready, so there is no
        # observedGeneration to wait on): give it several rounds, then the same single RayCluster must remain.
        time.sleep(10)
        assert [c["metadata"]["uid"] for c in rayclusters(api, namespace, name)] == [first]
        # Control: a cluster-shape change does make KubeRay prepare a new RayCluster, so the check above could fail.
        api.patch_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, name,
                                           {"spec": {"cluster": {"nodeType": "m5.8xlarge"}}})
        wait_for(lambda: any(c["metadata"]["uid"] != first for c in rayclusters(api, namespace, name)),
                 "a new RayCluster after a node-type change")


def test_autoscaling_bounds_scale_and_rejections(api, kubectl, namespace, run_operator):
    with run_operator():
        name, rs = create_sample(api, namespace, "autoscaling")
        auto = model_deployment(rs)["autoscaling_config"]
        assert (auto["min_replicas"], auto["max_replicas"]) == (2, 14)
        # kubectl scale outside the autoscaling bounds is refused by the CRD's rule
        proc = kubectl("scale", "-n", namespace, f"tgs/{name}", "--replicas=20", check=False)
        assert proc.returncode != 0
        assert "replicas must be within [autoscaling.minReplicas, autoscaling.maxReplicas]" in proc.stderr
        api.patch_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, name,
                                           {"spec": {"autoscaling": {"maxReplicas": 21}}})
        wait_for(lambda: model_deployment(get(api, namespace, C.RAYSERVICE_PLURAL, name))
                 ["autoscaling_config"]["max_replicas"] == 21, "the new maxReplicas in serveConfigV2")


def test_drift_is_repaired(api, k8s_api, namespace, run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    with run_operator() as log:
        create_tgs(api, namespace, doc)
        rs = wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")
        good = rs["spec"]["serveConfigV2"]
        # someone edits the RayService by hand
        api.patch_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name,
                                           {"spec": {"serveConfigV2": "applications: []\n"}})
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name)["spec"]["serveConfigV2"] == good,
                 "the operator to restore serveConfigV2")
        assert log.count("it drifted from its TextGenService") >= 1
        wait_for(lambda: [e for e in client.CoreV1Api(k8s_api).list_namespaced_event(namespace).items
                          if e.reason == "RayServiceApplied" and "drifted" in e.message
                          and e.involved_object.kind == C.KIND and e.involved_object.name == name],
                 "a RayServiceApplied event on the TextGenService")
        # someone deletes it
        old_uid = rs["metadata"]["uid"]
        api.delete_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name)
        back = wait_for(lambda: (r := get(api, namespace, C.RAYSERVICE_PLURAL, name)) and
                        r["metadata"]["uid"] != old_uid and r, "the RayService to come back")
        assert back["spec"]["serveConfigV2"] == good
        assert back["metadata"]["ownerReferences"][0]["name"] == name


def test_restart_creates_nothing_twice(api, namespace, run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    with run_operator() as log:
        create_tgs(api, namespace, doc)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")
        cluster = one_raycluster(api, namespace, name)
        wait_for(lambda: log.count("Handler 'reconcile' succeeded"), "the create handler to finish")
    applied, handled = log.count("Applied RayService"), log.count("Handler 'reconcile' succeeded")
    assert applied == 1
    rs = get(api, namespace, C.RAYSERVICE_PLURAL, name)
    with run_operator() as log:
        wait_for(lambda: log.count("Handler 'reconcile' succeeded") > handled, "the resume handler to run")
    again = get(api, namespace, C.RAYSERVICE_PLURAL, name)
    assert (again["metadata"]["uid"], again["metadata"]["generation"]) == \
        (rs["metadata"]["uid"], rs["metadata"]["generation"])
    assert [c["metadata"]["uid"] for c in rayclusters(api, namespace, name)] == [cluster["metadata"]["uid"]]
    assert log.count("Applied RayService") == applied


def test_deleting_the_textgenservice_removes_rayservice_and_raycluster(api, namespace, run_operator):
    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    with run_operator():
        create_tgs(api, namespace, doc)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")
        one_raycluster(api, namespace, name)
        tgs = get_tgs(api, namespace, name)
        assert not tgs["metadata"].get("finalizers"), "no finalizer: garbage collection does the deleting"
        api.delete_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, name)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name) is None, "the RayService to be collected",
                 timeout=120)
        wait_for(lambda: not api.list_namespaced_custom_object(
            C.RAY_GROUP, "v1", namespace, C.RAYCLUSTER_PLURAL,
            label_selector=f"ray.io/originated-from-cr-name={name}")["items"], "the RayCluster to be collected",
            timeout=120)
        assert get_tgs(api, namespace, name) is None


def test_python_dash_m_runs_the_operator_with_liveness(api, kubeconfig, namespace, crd_installed):
    """The way the image runs it: a subprocess with --namespace, a liveness endpoint and JSON logs."""
    port = free_port()
    env = {**os.environ, "KUBECONFIG": kubeconfig,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen_operator", "--namespace", namespace, "--log-format", "json",
         "--liveness", f"http://127.0.0.1:{port}/healthz", "--metrics-port", "0"],  # metrics: test_metrics
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return proc.poll() is not None and pytest.fail(f"operator exited {proc.returncode}")
        wait_for(healthy, "the liveness endpoint")
        doc = load_sample("fixed")
        create_tgs(api, namespace, doc)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, doc["metadata"]["name"]), "the RayService")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("Applied RayService" in r.get("message", "") for r in records), out[-2000:]


def _strip_rules(node):
    if isinstance(node, dict):
        return {k: _strip_rules(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_strip_rules(v) for v in node]
    return node


def test_invalid_spec_that_slipped_past_the_api_server_is_reported(api, kubectl, k8s_api, namespace, run_operator):
    """An object stored before the CRD had its rules (e.g. across an upgrade) is reported, not crash-looped on."""
    bad = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": "slipped"},
           "spec": {"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}
    relaxed = _strip_rules(yaml.safe_load(CRD_PATH.read_text()))

    def create_bad():
        try:
            return create_tgs(api, namespace, bad)
        except ApiException as exc:
            if exc.status != 422:
                raise
            return None  # the relaxed CRD is not in effect yet

    def rules_back():
        try:
            api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL,
                                                {**bad, "metadata": {"name": "probe"}}, dry_run="All")
        except ApiException as exc:
            return exc.status == 422
        return False

    try:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(relaxed))
        wait_for(create_bad, "the API server to accept the object under the rule-less CRD")
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
        wait_for(rules_back, "the CRD's rules to be enforced again")

    with run_operator() as log:
        status = wait_for(lambda: (get_tgs(api, namespace, "slipped").get("status") or {}).get("conditions") and
                          get_tgs(api, namespace, "slipped")["status"], "the Degraded condition")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
        assert "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas" in degraded["message"]
        events = wait_for(lambda: [e for e in client.CoreV1Api(k8s_api).list_namespaced_event(namespace).items
                                   if e.reason == "InvalidSpec" and e.involved_object.name == "slipped"],
                          "an InvalidSpec event")
        assert events[0].type == "Warning" and "minReplicas" in events[0].message
        assert get(api, namespace, C.RAYSERVICE_PLURAL, "slipped") is None
        assert log.count("failed permanently") == 1  # no retry loop

        # fixing the spec is all it takes
        api.patch_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.PLURAL, "slipped",
                                           {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}})
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, "slipped"), "the RayService after the fix")
        wait_for(lambda: next(c for c in get_tgs(api, namespace, "slipped")["status"]["conditions"]
                              if c["type"] == "Degraded")["status"] == "False", "Degraded to clear")
