"""Operator-side validation: every rule of the CRD, checked again by the operator with the same message."""

from __future__ import annotations

import kopf
import pytest
from textgen_operator.spec import ROOT_RULES, Autoscaling, Cluster, Serving, TextGenServiceSpec
from textgen_operator.validation import InvalidSpec, parse, validate

from tests.operator.tgs_common import RULE_CASES


def test_every_rule_has_a_case():
    declared = [r.message for m in (TextGenServiceSpec, Autoscaling, Serving, Cluster) for r in m.rules]
    covered = [msg for _, msg in RULE_CASES.values()]
    for message in declared:
        assert any(message.startswith(c) for c in covered), f"no test case for rule: {message}"


@pytest.mark.parametrize("case", list(RULE_CASES), ids=list(RULE_CASES))
def test_rule_violations_are_reported(case):
    spec, message = RULE_CASES[case]
    parsed, problems = parse("demo", spec)
    assert parsed is None
    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize("case", list(RULE_CASES), ids=list(RULE_CASES))
def test_the_boundary_itself_is_valid(case):
    """Each rule's edge case (equality) passes, so the rules are not stricter than their messages say."""
    edges = {
        "min<=max": {"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 3}},
        "replicas-in-bounds": {"replicas": 4, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
        "default<=limit": {"serving": {"maxTokensLimit": 64, "defaultMaxTokens": 64}},
        "ongoing>=batch": {"serving": {"maxBatchSize": 8, "maxOngoingRequests": 8}},
        "cpus-per-replica-fit": {"cluster": {"nodeType": "m5.xlarge", "cpusPerReplica": 2.5}},
        "cpus-per-replica-vs-worker": {"cluster": {"cpusPerReplica": 3.5, "worker": {"cpus": 4}}},
        "worker-cpus-fit": {"cluster": {"nodeType": "m5.2xlarge", "worker": {"cpus": 7}}},
        "worker-memory-fit": {"cluster": {"worker": {"memoryGi": 56}}},
        "head-cpus-fit": {"cluster": {"nodeType": "m5.xlarge", "head": {"cpus": 3}}},
        "head-memory-fit": {"cluster": {"nodeType": "m5.xlarge", "head": {"memoryGi": 14}}},
        "ray-version-auth": {"cluster": {"rayVersion": "2.52.0"}},
        "worker-memory-admission": {"serving": {"maxBatchSize": 18},
                                    "cluster": {"cpusPerReplica": 1, "worker": {"cpus": 2, "memoryGi": 4}}},
    }
    parsed, problems = parse("demo", edges[case])
    assert problems == [] and parsed is not None


@pytest.mark.parametrize("spec,fits", [
    ({}, True),  # the defaults: one replica, batch 32, an m5.4xlarge worker
    ({"replicas": 7, "serving": {"maxBatchSize": 64}}, True),  # 7 replicas fill the worker's CPUs and just fit
    ({"replicas": 7, "serving": {"maxBatchSize": 256}}, False),  # ~19 GiB of KV cache each: the case
    ({"serving": {"maxBatchSize": 256}}, True),  # the same batch, but one replica in all
    ({"autoscaling": {"enabled": True, "maxReplicas": 8}, "serving": {"maxBatchSize": 128}}, False),
    ({"model": {"name": "gpt2-xl"}, "replicas": 3, "serving": {"maxBatchSize": 32}}, False),
    ({"model": {"name": "gpt2-xl"}, "replicas": 3, "serving": {"maxBatchSize": 8}}, True),
])
def test_memory_admission(spec, fits):
    """replicas on one worker x (weights + full KV cache) must fit the worker pod's memory."""
    parsed, problems = parse("demo", spec)
    assert (parsed is not None) is fits, problems
    assert fits or any(p.startswith("the model replicas that fit on one worker pod") for p in problems)


def test_replicas_outside_bounds_are_fine_without_autoscaling():
    assert parse("demo", {"replicas": 9, "autoscaling": {"enabled": False, "maxReplicas": 4}})[1] == []


def test_name_rules():
    length, dns1035 = ROOT_RULES
    assert parse("a" * 47, {})[1] == [] and parse("gpt2-x9", {})[1] == []
    assert parse("a" * 48, {})[1] == [length.message] and "47" in length.message
    for bad in ("9lives", "has.dot", "ends-", "Upper"):
        assert parse(bad, {})[1] == [dns1035.message], bad


@pytest.mark.parametrize("spec,where", [
    ({"replicas": 0}, "spec.replicas"),
    ({"replicas": "three"}, "spec.replicas"),
    ({"autoscaling": {"minReplicas": -1}}, "spec.autoscaling.minReplicas"),
    ({"autoscaling": {"targetOngoingRequests": 0}}, "spec.autoscaling.targetOngoingRequests"),
    ({"serving": {"dtype": "float16"}}, "spec.serving.dtype"),
    ({"serving": {"maxTokensLimit": 2048}}, "spec.serving.maxTokensLimit"),
    ({"cluster": {"nodeType": "t2.micro"}}, "spec.cluster.nodeType"),
    ({"cluster": {"cpusPerReplica": 0.2}}, "spec.cluster.cpusPerReplica"),
    ({"cluster": {"rayVersion": "latest"}}, "spec.cluster.rayVersion"),
    ({"cluster": {"upgradeStrategy": "Rolling"}}, "spec.cluster.upgradeStrategy"),
    ({"unknownField": 1}, "spec.unknownField"),
])
def test_field_errors_name_the_field(spec, where):
    parsed, problems = parse("demo", spec)
    assert parsed is None
    assert any(p.startswith(where + ":") for p in problems), problems


def test_all_problems_are_reported_at_once():
    problems = parse("a" * 60, {"replicas": 0, "serving": {"maxTokensLimit": 10, "defaultMaxTokens": 20}})[1]
    assert len(problems) == 3, problems


def test_invalid_spec_lists_every_problem_and_is_no_kopf_error():
    """A plain exception: handlers.py alone turns it into kopf.PermanentError (test_layering.py)."""
    with pytest.raises(InvalidSpec) as info:
        validate("demo", {"serving": {"maxTokensLimit": 10, "defaultMaxTokens": 20}, "replicas": 0})
    assert not isinstance(info.value, kopf.PermanentError)
    assert len(info.value.problems) == 2
    assert "defaultMaxTokens" in str(info.value) and "spec.replicas" in str(info.value)


def test_defaults_are_valid():
    spec = validate("demo", None)
    assert spec.replicas == 1 and spec.cluster.node_type == "m5.4xlarge" and spec.model.name == "gpt2"
    assert spec.autoscaling.enabled is False


@pytest.mark.parametrize("autoscaling,on,bounds", [
    ({}, False, (1, 4)),
    ({"minReplicas": 1, "maxReplicas": 8}, True, (1, 8)),  # what a new user writes: bounds mean autoscaling
    ({"maxReplicas": 8}, True, (1, 8)),
    ({"enabled": False, "minReplicas": 1, "maxReplicas": 8}, False, (1, 8)),  # paused, bounds kept
    ({"enabled": True}, True, (1, 4)),
])
def test_autoscaling_bounds_imply_autoscaling_unless_disabled(autoscaling, on, bounds):
    from textgen_operator.builder import build_serve_config

    parsed, problems = parse("demo", {"autoscaling": autoscaling})
    assert problems == []
    assert parsed.autoscaling.enabled is on
    assert (parsed.autoscaling.min_replicas, parsed.autoscaling.max_replicas) == bounds
    model = build_serve_config(parsed)["applications"][0]["deployments"][0]
    if on:
        auto = model["autoscaling_config"]
        assert (auto["min_replicas"], auto["max_replicas"]) == bounds and "num_replicas" not in model
    else:
        assert model["num_replicas"] == 1 and "autoscaling_config" not in model
