"""Pure parts of the closed Ray control plane: the NetworkPolicy builder, its settings, the Ray token helpers.
(The policy against real pods and the token Secret KubeRay makes: test_rbac.py.)"""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from textgen_operator import constants as C
from textgen_operator.builder import build_rayservice
from textgen_operator.networkpolicy import (
    CONTROL_PLANE_PORTS,
    ENV_SETTINGS,
    KUBERAY_OPERATOR_PEER,
    NetworkPolicySettings,
    build_networkpolicy,
    settings_from_env,
)
from textgen_operator.ray_auth import MIN_RAY_VERSION, active_ray_cluster, auth_secret_name, token_from_secret

from tests.chart.chart_utils import render_objects
from tests.operator.tgs_common import SAMPLES

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def test_default_policy_closes_the_control_ports_and_leaves_serve_open():
    policy = build_networkpolicy("gpt2", "team-a", NetworkPolicySettings())
    spec = policy["spec"]
    assert policy["metadata"]["name"] == "gpt2-ray" and policy["metadata"]["namespace"] == "team-a"
    assert spec["podSelector"] == {"matchLabels": {C.LABEL_SERVICE: "gpt2"}} and spec["policyTypes"] == ["Ingress"]
    own, control, serve = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {C.LABEL_SERVICE: "gpt2"}}}]}  # every port, own pods
    assert control["from"] == [KUBERAY_OPERATOR_PEER] and ports(control) == {6379, 8265, 10001}
    assert serve == {"ports": [{"protocol": "TCP", "port": C.SERVE_PORT}]}  # no `from`: anywhere
    # No rule opens a control port to everyone.
    assert all("from" in rule for rule in spec["ingress"] if ports(rule) & set(CONTROL_PLANE_PORTS.values()))


def test_serve_from_restricts_the_serve_port_only():
    policy = build_networkpolicy("m", "ns", NetworkPolicySettings(serve_from=(MONITORING,)))
    own, control, serve = policy["spec"]["ingress"]
    assert serve["from"] == [MONITORING] and ports(serve) == {C.SERVE_PORT}
    assert control["from"] == [KUBERAY_OPERATOR_PEER]


def test_settings_from_env():
    assert settings_from_env({}) == NetworkPolicySettings()
    got = settings_from_env({ENV_SETTINGS: json.dumps({"enabled": False, "controlPlaneFrom": [MONITORING],
                                                       "serveFrom": [MONITORING]})})
    assert got == NetworkPolicySettings(enabled=False, control_plane_from=(MONITORING,), serve_from=(MONITORING,))
    with pytest.raises(ValueError, match="unknown keys"):
        settings_from_env({ENV_SETTINGS: '{"servFrom": []}'})


def test_the_chart_passes_its_values_to_the_operator():
    """The JSON the chart renders into $TEXTGEN_NETWORK_POLICY is what settings_from_env reads: KubeRay's operator,
    the operator's own pods, then the extra peers."""
    objs = render_objects("--set", "networkPolicy.serveFrom[0].namespaceSelector.matchLabels.team=a",
                          "--set", "networkPolicy.kuberayOperator.namespace=ray-system")
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = settings_from_env(env)
    kuberay, own = settings.control_plane_from
    assert kuberay["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ray-system"}
    assert own["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert settings.serve_from == ({"namespaceSelector": {"matchLabels": {"team": "a"}}},)


def test_chart_control_plane_from_reaches_the_policy_after_the_builtin_peers():
    """networkPolicy.controlPlaneFrom (e.g. the API servers' addresses, for KubeRay's --use-kubernetes-proxy) is
    admitted to the control ports only, after KubeRay's operator and this operator, and never to the Serve port."""
    api_servers = {"ipBlock": {"cidr": "10.0.0.0/24"}}
    objs = render_objects("--set", "networkPolicy.controlPlaneFrom[0].ipBlock.cidr=10.0.0.0/24")
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = settings_from_env(env)
    assert len(settings.control_plane_from) == 3 and settings.control_plane_from[2] == api_servers
    _own, control, serve = build_networkpolicy("gpt2", "ns", settings)["spec"]["ingress"]
    assert control["from"][0] == settings.control_plane_from[0] and control["from"][2] == api_servers
    assert ports(control) == set(CONTROL_PLANE_PORTS.values())
    assert "from" not in serve  # serveFrom is empty: the extra control-plane peer changes nothing there


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_asks_kuberay_for_token_auth(path):
    doc = yaml.safe_load(path.read_text())
    cluster = build_rayservice(doc["metadata"]["name"], "ns", doc["spec"])["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert tuple(map(int, cluster["rayVersion"].split("."))) >= MIN_RAY_VERSION  # KubeRay refuses token auth below


def test_token_secret_name_follows_kuberays_check_name():
    assert auth_secret_name("gpt2-abcde") == "gpt2-abcde"
    long = "x" * 45 + "-abcde" + "yyyy"  # 55 characters: KubeRay keeps the last 50
    assert auth_secret_name(long) == long[-50:]
    assert auth_secret_name("7up-abcde") == "rup-abcde"  # no leading digit


def test_token_and_active_cluster_helpers():
    assert token_from_secret({"auth_token": base64.b64encode(b"s3cret").decode()}) == "s3cret"
    assert token_from_secret({}) is None and token_from_secret(None) is None
    assert active_ray_cluster({"status": {"activeServiceStatus": {"rayClusterName": "gpt2-abcde"}}}) == "gpt2-abcde"
    assert active_ray_cluster({"status": {}}) is None and active_ray_cluster(None) is None
