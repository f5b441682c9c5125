"""Operator-side validation: every rule of the CRD, checked again by the operator with the same message."""

from __future__ import annotations

import kopf
import pytest
from textgen_operator.spec import ROOT_RULES, Autoscaling, Cluster, Serving, TextGenServiceSpec
from textgen_operator.validation import InvalidSpec, parse, validate
from tgs_common import RULE_CASES


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
    }
    parsed, problems = parse("demo", edges[case])
    assert problems == [] and parsed is not None


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
    ({"cluster": {"cpusPerReplica": 0.3}}, "spec.cluster.cpusPerReplica"),
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


def test_invalid_spec_is_a_permanent_error_with_every_problem():
    with pytest.raises(InvalidSpec) as info:
        validate("demo", {"serving": {"maxTokensLimit": 10, "defaultMaxTokens": 20}, "replicas": 0})
    assert isinstance(info.value, kopf.PermanentError)
    assert len(info.value.problems) == 2
    assert "defaultMaxTokens" in str(info.value) and "spec.replicas" in str(info.value)


def test_defaults_are_valid():
    spec = validate("demo", None)
    assert spec.replicas == 1 and spec.cluster.node_type == "m5.4xlarge" and spec.model.name == "gpt2"
    assert spec.autoscaling.enabled is False
