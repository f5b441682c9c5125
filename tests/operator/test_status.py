"""Pure status mirroring: RayService conditions and Serve application statuses -> TextGenService status."""

from __future__ import annotations

from tests.operator.status_helpers import T0, T1, build_status, conds, rayservice, tgs


def test_fixed_fields():
    s = build_status(tgs(), None, now=T0)
    assert s["url"] == "http://demo-serve-svc.ns.svc:8000"
    assert s["rayServiceName"] == "demo"
    assert s["selector"] == "textgen.dev/service=demo,ray.io/node-type=worker"
    assert s["replicas"] == 4 and s["readyReplicas"] == 0


def test_no_rayservice_yet():
    s = build_status(tgs(), None, now=T0)
    assert conds(s) == {"Ready": ("False", "RayServiceMissing"), "Progressing": ("True", "CreatingRayService"),
                        "Degraded": ("False", "AsExpected")}
    assert all(c["lastTransitionTime"] == T0 and c["observedGeneration"] == 3 for c in s["conditions"])


def test_running_and_ready():
    rs = rayservice(ready=("True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0"),
                    app=("RUNNING", ""), model=("HEALTHY", ""))
    s = build_status(tgs(), rs, now=T0)
    assert conds(s) == {"Ready": ("True", "NonZeroServeEndpoints"), "Progressing": ("False", "Available"),
                        "Degraded": ("False", "AsExpected")}
    assert s["readyReplicas"] == 4 and s["observedGeneration"] == 3 and s["rayClusterName"] == "demo-abcde"
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "Number of serve endpoints is greater than 0"


def test_initializing_mirrors_kuberay_reason():
    rs = rayservice(ready=("False", "Initializing", "RayService is initializing"))
    s = build_status(tgs(), rs, now=T0)
    assert conds(s)["Ready"] == ("False", "Initializing")
    assert conds(s)["Progressing"] == ("True", "ApplicationPending")
    assert s["readyReplicas"] == 0


def test_deploy_failed_is_degraded_with_the_app_message():
    rs = rayservice(ready=("True", "NonZeroServeEndpoints", ""), app=("DEPLOY_FAILED", "ImportError: no module x"))
    s = build_status(tgs(), rs, now=T0)
    assert conds(s)["Degraded"] == ("True", "ApplicationDeployFailed")
    assert conds(s)["Progressing"][0] == "False"
    degraded = next(c for c in s["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == "ImportError: no module x"
    assert s["readyReplicas"] == 0


def test_unhealthy_model_deployment():
    rs = rayservice(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", ""),
                    model=("UNHEALTHY", "replica died"))
    s = build_status(tgs(), rs, now=T0)
    assert conds(s)["Degraded"] == ("True", "ModelDeploymentUnhealthy")
    assert s["readyReplicas"] == 0


def test_deploying_is_progressing():
    rs = rayservice(ready=("True", "NonZeroServeEndpoints", ""), app=("DEPLOYING", "scaling"))
    assert conds(build_status(tgs(), rs, now=T0))["Progressing"] == ("True", "ApplicationDeploying")


def test_upgrade_and_pending_cluster_are_progressing():
    base = dict(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", ""))
    s = build_status(tgs(), rayservice(**base, upgrade="Preparing a new cluster"), now=T0)
    assert conds(s)["Progressing"] == ("True", "UpgradeInProgress")
    s = build_status(tgs(), rayservice(**base, pending="demo-xyz12"), now=T0)
    assert conds(s)["Progressing"] == ("True", "PreparingNewCluster")


def test_new_generation_not_yet_applied_or_observed():
    base = dict(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", ""))
    s = build_status(tgs(generation=4), rayservice(**base, applied=3), now=T0)
    assert conds(s)["Progressing"] == ("True", "ApplyingSpec")
    assert s["observedGeneration"] == 3
    s = build_status(tgs(), rayservice(**base, generation=2, observed=1), now=T0)
    assert conds(s)["Progressing"] == ("True", "WaitingForKubeRay")


def test_invalid_spec_is_degraded_and_keeps_replicas_untouched():
    s = build_status(tgs(spec={"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 1}}),
                     rayservice(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", "")), now=T0)
    assert conds(s)["Degraded"] == ("True", "InvalidSpec")
    assert conds(s)["Progressing"] == ("False", "InvalidSpec")
    assert conds(s)["Ready"] == ("True", "NonZeroServeEndpoints")  # the old RayService keeps serving
    msg = next(c for c in s["conditions"] if c["type"] == "Degraded")["message"]
    assert "minReplicas must be less than or equal to autoscaling.maxReplicas" in msg
    assert "replicas" not in s and "readyReplicas" not in s  # a merge patch keeps the last good values
    assert s["observedGeneration"] == 3


def test_transition_time_kept_while_status_unchanged():
    first = build_status(tgs(), None, now=T0)
    again = build_status(tgs(conditions=first["conditions"]), None, now=T1)
    assert [c["lastTransitionTime"] for c in again["conditions"]] == [T0, T0, T0]
    rs = rayservice(ready=("True", "NonZeroServeEndpoints", ""), app=("RUNNING", ""))
    later = build_status(tgs(conditions=first["conditions"]), rs, now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T0}
