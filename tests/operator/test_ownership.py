"""Pure checks behind drift repair: whose RayService it is, and what counts as drift (no cluster)."""

from __future__ import annotations

import copy
import socket
import threading

import pytest
from textgen_operator import handlers
from textgen_operator.builder import build_rayservice
from textgen_operator.ownership import is_subset, owned_by

from tests.operator.status_helpers import build_status

TGS = {"apiVersion": "textgen.dev/v1alpha1", "kind": "TextGenService",
       "metadata": {"name": "gpt2", "namespace": "demo", "uid": "u-1", "generation": 1}, "spec": {}}


def ours() -> dict:
    rs = build_rayservice("gpt2", "demo", {}, generation=1)
    rs["metadata"]["ownerReferences"] = [{"apiVersion": "textgen.dev/v1alpha1", "kind": "TextGenService",
                                          "name": "gpt2", "uid": "u-1", "controller": True}]
    return rs


def test_a_hand_added_sidecar_is_not_drift_but_a_changed_container_is():
    want = ours()
    have = copy.deepcopy(want)
    workers = have["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    workers.append({"name": "log-shipper", "image": "fluent-bit:3"})
    have["metadata"]["ownerReferences"].append({"kind": "Other", "name": "x", "uid": "u-9"})
    assert is_subset(want, have)
    workers[0]["image"] = "someone-elses:1"
    assert not is_subset(want, have)
    del workers[0]
    assert not is_subset(want, have)  # ours is gone (only the sidecar is left)


def test_unkeyed_lists_still_compare_whole():
    assert is_subset({"a": [1, 2]}, {"a": [1, 2], "b": 0})
    assert not is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})


def test_owned_means_this_very_textgenservice():
    rs = ours()
    assert owned_by(rs, TGS)
    recreated = copy.deepcopy(TGS)
    recreated["metadata"]["uid"] = "u-2"  # same name, a new object: the old RayService is not its own
    assert not owned_by(rs, recreated)
    foreign = copy.deepcopy(rs)
    del foreign["metadata"]["ownerReferences"]
    assert not owned_by(foreign, TGS)


def test_conflict_is_degraded_and_not_ready():
    status = build_status(TGS, None, conflict="RayService demo/gpt2 already exists", now="2026-01-01T00:00:00Z")
    cond = {c["type"]: c for c in status["conditions"]}
    assert (cond["Degraded"]["status"], cond["Degraded"]["reason"]) == ("True", "RayServiceConflict")
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "RayServiceConflict")
    assert "already exists" in cond["Degraded"]["message"]


@pytest.mark.timeout(60)
def test_api_calls_time_out_on_a_server_that_never_answers(tmp_path, monkeypatch):
    """A stuck connection fails the call (the repair loop retries it) instead of pinning a handler forever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():  # accept and never answer
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: stuck, cluster: {{server: "http://127.0.0.1:{server.getsockname()[1]}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: stuck, user: u}}}}]
current-context: c
""")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(handlers, "_API", None)
    monkeypatch.setattr(handlers, "API_TIMEOUT_S", (1, 1))
    try:
        with pytest.raises(Exception) as info:
            handlers.get_rayservice("demo", "gpt2")
        assert "timed out" in repr(info.value).lower() or "timeout" in repr(info.value).lower(), info.value
        assert accepted, "the call never reached the server"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()
