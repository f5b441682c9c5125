"""Inputs and readers for the pure status tests (test_status.py, test_status_day2.py): TextGenService and RayService
bodies, status.build_status as a handler calls it, the conditions as {type: (status, reason)}."""

from __future__ import annotations

from textgen_operator import constants as C
from textgen_operator import status as status_module
from textgen_operator.validation import parse

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def build_status(tgs, rayservice, **kwargs):
    """status.build_status given the spec parsed from `tgs`, as a handler parses it once per event."""
    return status_module.build_status(tgs, parse(tgs["metadata"]["name"], tgs.get("spec")), rayservice, **kwargs)


def tgs(spec=None, generation=3, conditions=None, name="demo"):
    body = {"apiVersion": C.API_VERSION, "kind": C.KIND,
            "metadata": {"name": name, "namespace": "ns", "generation": generation}, "spec": spec or {"replicas": 4}}
    if conditions is not None:
        body["status"] = {"conditions": conditions}
    return body


def rayservice(ready=None, app=None, model=None, applied=3, upgrade=None, pending=None, generation=1, observed=1):
    status = {"observedGeneration": observed, "conditions": []}
    if ready:
        status["conditions"].append({"type": "Ready", "status": ready[0], "reason": ready[1], "message": ready[2]})
    if upgrade:
        status["conditions"].append({"type": "UpgradeInProgress", "status": "True", "reason": "x", "message": upgrade})
    if app:
        application = {"status": app[0], "message": app[1]}
        if model:
            application["serveDeploymentStatuses"] = {"GPT2Model": {"status": model[0], "message": model[1]}}
        status["activeServiceStatus"] = {"rayClusterName": "demo-abcde", "applicationStatuses": {"textgen": application}}
    if pending:
        status["pendingServiceStatus"] = {"rayClusterName": pending}
    return {"metadata": {"name": "demo", "generation": generation,
                         "annotations": {C.ANNOTATION_GENERATION: str(applied)}}, "status": status}


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
