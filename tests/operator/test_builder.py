"""The pure builder: golden RayServices for the samples, the serve-app contract, the worker-group math."""

from __future__ import annotations

import copy

import pytest
import yaml
from textgen_operator import constants as C
from textgen_operator.builder import build_rayservice, worker_bounds
from textgen_operator.render import render_file
from textgen_operator.spec import TextGenServiceSpec

from serve_app.config import AppArgs
from tests.operator.tgs_common import GOLDEN_DIR, SAMPLES


def test_every_sample_has_a_golden_and_no_stale_goldens():
    assert {p.stem for p in SAMPLES} == {p.name.removesuffix(".rayservice.yaml") for p in GOLDEN_DIR.glob("*.yaml")}
    assert {"fixed", "autoscaling", "seed-scale"} <= {p.stem for p in SAMPLES}


def test_golden(sample):
    path, _ = sample
    golden = GOLDEN_DIR / f"{path.stem}.rayservice.yaml"
    assert render_file(path) == golden.read_text(), f"{golden.name} differs from the builder: run `make golden`"


def rs_for(spec: dict, name: str = "demo", namespace: str = "ns") -> dict:
    return build_rayservice(name, namespace, spec)


def serve_config(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def test_serve_config_follows_the_app_contract(sample):
    _, doc = sample
    rs = rs_for(doc["spec"])
    cfg = serve_config(rs)
    assert cfg["http_options"]["port"] == 8000
    (app,) = cfg["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("textgen", "/", "serve_app.app:build_app")
    AppArgs.model_validate(app["args"])  # unknown keys or out-of-range values fail here
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"GPT2Model", "TextGenAPI"}
    for d in deployments.values():
        assert ("num_replicas" in d) != ("autoscaling_config" in d), "Serve takes one or the other"
    spec = TextGenServiceSpec.model_validate(doc["spec"])
    model = deployments["GPT2Model"]
    assert model["ray_actor_options"]["num_cpus"] == spec.cluster.cpus_per_replica
    assert model["max_ongoing_requests"] == spec.serving.model_max_ongoing_requests
    assert model["max_queued_requests"] == spec.serving.max_queued_requests


def test_args_at_the_schema_limits_are_accepted_by_the_app():
    spec = {"serving": {"maxBatchSize": 256, "maxTokensLimit": 1023, "defaultMaxTokens": 1023,
                        "maxOngoingRequests": 256, "maxQueuedRequests": 100000,
                        "dtype": "bfloat16", "torchThreads": 256},
            "model": {"name": "/models/gpt2", "servedModelName": "gpt2", "fallbackModelDir": "/models/stand-in"}}
    args = AppArgs.model_validate(serve_config(rs_for(spec))["applications"][0]["args"])
    assert (args.max_tokens_limit, args.torch_threads, args.dtype) == (1023, 256, "bfloat16")
    assert args.fallback_model_dir == "/models/stand-in" and args.served_model_name == "gpt2"


def test_fixed_replicas():
    rs = rs_for({"replicas": 9})
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    (group,) = cluster["workerGroupSpecs"]
    # m5.4xlarge: 15 allocatable CPUs, 0.5 for the ingress, 2 per replica -> 7 per node -> 2 nodes for 9
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 2)
    deployments = {d["name"]: d for d in serve_config(rs)["applications"][0]["deployments"]}
    assert deployments["GPT2Model"]["num_replicas"] == 9
    assert deployments["TextGenAPI"]["num_replicas"] == 2


def test_autoscaling():
    rs = rs_for({"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 20,
                                                 "targetOngoingRequests": 3, "upscaleDelayS": 5,
                                                 "downscaleDelayS": 60}})
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 3)
    model = serve_config(rs)["applications"][0]["deployments"][0]
    assert model["autoscaling_config"] == {
        "min_replicas": 1, "initial_replicas": 3, "max_replicas": 20, "target_ongoing_requests": 3.0,
        "upscale_delay_s": 5.0, "downscale_delay_s": 60.0, "look_back_period_s": 30.0}


@pytest.mark.parametrize("node_type,cpus_per_replica,per_node", [
    ("m5.xlarge", 1, 2), ("m5.2xlarge", 2, 3), ("m5.4xlarge", 2, 7), ("m5.4xlarge", 4, 3), ("m5.8xlarge", 3, 10),
    ("m5.4xlarge", 0.5, 29),
])
def test_replicas_per_node(node_type, cpus_per_replica, per_node):
    spec = TextGenServiceSpec.model_validate({"cluster": {"nodeType": node_type, "cpusPerReplica": cpus_per_replica}})
    assert spec.cluster.replicas_per_node == per_node
    node = C.NODE_TYPES[node_type]
    assert per_node * cpus_per_replica + C.INGRESS_CPUS <= node.vcpus - 1


def test_scale_to_zero_bounds():
    spec = TextGenServiceSpec.model_validate(
        {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 8}})
    assert worker_bounds(spec) == (1, 0, 2)


def test_seed_scale_is_eight_m5_4xlarge_workers():
    doc = yaml.safe_load((GOLDEN_DIR.parents[2] / "manifests" / "samples" / "seed-scale.yaml").read_text())
    cluster = rs_for(doc["spec"])["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (8, 8, 8)
    assert group["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "m5.4xlarge"}


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else int(quantity)


def gib(quantity: str) -> float:
    return int(quantity[:-2]) / 1024 if quantity.endswith("Mi") else int(quantity.removesuffix("Gi"))


def test_autoscaler_sidecar_comes_out_of_the_head_pods_size():
    spec = {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}, "cluster": {"head": {"cpus": 1, "memoryGi": 3}}}
    cluster = rs_for(spec)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    sidecar = cluster["autoscalerOptions"]["resources"]
    assert sidecar["requests"] == sidecar["limits"]  # the head pod stays Guaranteed
    assert cpus(head["cpu"]) + cpus(sidecar["limits"]["cpu"]) == 1
    assert gib(head["memory"]) + gib(sidecar["limits"]["memory"]) == 3
    fixed = rs_for({"cluster": {"head": {"cpus": 1, "memoryGi": 3}}})["spec"]["rayClusterConfig"]
    assert fixed["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == \
        {"cpu": "1", "memory": "3Gi"}  # no sidecar: the head container has it all


def test_head_runs_no_replicas_and_pods_fit_the_node(sample):
    _, doc = sample
    spec = TextGenServiceSpec.model_validate(doc["spec"])
    cluster = rs_for(doc["spec"])["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["rayVersion"] == spec.cluster.ray_version
    node = C.NODE_TYPES[spec.cluster.node_type]
    for tmpl in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        (container,) = tmpl["spec"]["containers"]
        assert container["image"] == spec.cluster.image
        res = container["resources"]
        assert res["requests"] == res["limits"]
        assert cpus(res["limits"]["cpu"]) < node.vcpus
        assert gib(res["limits"]["memory"]) < node.memory_gib
        assert tmpl["spec"]["nodeSelector"] == {C.NODE_TYPE_LABEL: spec.cluster.node_type}
        assert tmpl["metadata"]["labels"][C.LABEL_SERVICE] == "demo"


def _cluster_hash_part(rs: dict) -> dict:
    """What KubeRay hashes to decide on a new RayCluster: the cluster spec minus worker replicas/min/max."""
    cluster = copy.deepcopy(rs["spec"]["rayClusterConfig"])
    for g in cluster["workerGroupSpecs"]:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            g.pop(key, None)
    return cluster


@pytest.mark.parametrize("change", [
    {"replicas": 30},
    {"serving": {"maxBatchSize": 8}},
    {"model": {"name": "distilgpt2"}},
])
def test_replica_and_serving_changes_never_need_a_new_cluster(change):
    before, after = rs_for({"replicas": 4}), rs_for({"replicas": 4, **change})
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    assert _cluster_hash_part(before) == _cluster_hash_part(after)


def test_shape_changes_do_change_the_cluster():
    before, after = rs_for({}), rs_for({"cluster": {"nodeType": "m5.8xlarge"}})
    assert _cluster_hash_part(before) != _cluster_hash_part(after)


def test_metadata_and_generation_annotation():
    rs = build_rayservice("demo", "ns", {}, generation=7)
    assert rs["apiVersion"] == "ray.io/v1" and rs["kind"] == "RayService"
    assert rs["metadata"]["name"] == "demo" and rs["metadata"]["namespace"] == "ns"
    assert rs["metadata"]["annotations"] == {C.ANNOTATION_GENERATION: "7"}
    labels = rs["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "textgen-operator"
    assert labels["app.kubernetes.io/instance"] == "demo"
    assert "upgradeStrategy" in rs["spec"] and rs["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def test_builder_rejects_invalid_specs():
    from textgen_operator.validation import InvalidSpec

    with pytest.raises(InvalidSpec):
        build_rayservice("demo", "ns", {"replicas": 0})
