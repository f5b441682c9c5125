"""The operator's Prometheus metrics: served by `python -m textgen_operator` on --metrics-port, counting reconciles
and drift repairs against the real API server; the chart's Deployment names the same port."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from textgen_operator import constants as C
from textgen_operator import metrics
from textgen_operator.__main__ import kopf_args, options

from serve_app.run_local import free_port
from tests.chart.chart_utils import by_kind, render_objects
from tests.operator.tgs_common import ROOT, create_tgs, get, load_sample
from tests.support import stop_process, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def reconciles(seen, outcome: str) -> float:
    return seen[("textgen_operator_reconciles_total", (("outcome", outcome),))]


def drift_repairs(seen, kind: str) -> float:
    return seen[("textgen_operator_drift_repairs_total", (("kind", kind),))]


def test_the_port_option_and_its_default():
    assert options([]).metrics_port == C.METRICS_PORT
    assert options(["--metrics-port", "0"]).metrics_port == 0
    assert not any("metrics" in a for a in kopf_args(["--metrics-port", "9999"]))  # ours, not kopf's
    with pytest.raises(SystemExit):
        options(["--metrics-port", "70000"])


def test_the_metrics_host_option_reaches_the_endpoint_and_make_run_operator_keeps_it_on_loopback(monkeypatch):
    from textgen_operator import __main__ as entry

    assert options([]).metrics_host == "0.0.0.0"  # in a pod: Prometheus scrapes the pod IP
    monkeypatch.setenv("TEXTGEN_METRICS_HOST", "::1")
    assert options([]).metrics_host == "::1"
    seen = []

    class Stop(Exception):
        pass

    def fake_serve(port, addr):
        seen.append((port, addr))
        raise Stop  # before kopf would start

    monkeypatch.setattr(metrics, "serve", fake_serve)
    with pytest.raises(Stop):
        entry.main(["--metrics-port", "9199", "--metrics-host", "127.0.0.1"])
    assert seen == [(9199, "127.0.0.1")]
    # `make run-operator` runs on a developer's machine: liveness and metrics on loopback only.
    monkeypatch.delenv("TEXTGEN_METRICS_HOST")
    recipe = subprocess.run(["make", "-s", "-n", "run-operator", "OPERATOR_ARGS="], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout
    argv = shlex.split(recipe.strip().splitlines()[-1])
    ours = options(argv[argv.index("textgen_operator") + 1:])
    assert ours.metrics_host == "127.0.0.1" and ours.liveness.startswith("http://127.0.0.1:")


def test_serve_exposes_every_series_from_zero_and_0_disables():
    assert metrics.serve(0) is None
    port = free_port()
    server = metrics.serve(port, "127.0.0.1")
    try:
        seen = scrape(port)
        for outcome in metrics.RECONCILE_OUTCOMES:
            assert ("textgen_operator_reconciles_total", (("outcome", outcome),)) in seen
        for handler in metrics.HANDLERS:
            assert ("textgen_operator_handler_errors_total", (("handler", handler),)) in seen
        assert ("textgen_operator_managed_textgenservices", ()) in seen
        with pytest.raises(OSError):  # a port in use is an error at start, not a silent operator without metrics
            metrics.serve(port, "127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()


def test_the_charts_metrics_port_is_the_operators_default():
    (container,) = by_kind(render_objects(), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == C.METRICS_PORT
    assert ports["metrics"] != ports["health"]
    assert options(container["args"]).metrics_port == C.METRICS_PORT


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_reconciles_and_drift_repairs_are_counted(api, kubeconfig, namespace, crd_installed, tmp_path):
    """The way the image runs it (python -m, in a process of its own): scrape, create, delete the RayService."""
    port = free_port()
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}"}
    log = tmp_path / "operator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "textgen_operator", "--namespace", namespace,
                                 "--liveness", "none", "--log-format", "plain", "--metrics-port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def scraped():
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return scrape(port)
            except OSError:
                return None

        before = wait_for(scraped, "the metrics endpoint")
        assert reconciles(before, "applied") == 0 and drift_repairs(before, "RayService") == 0

        doc = load_sample("fixed")
        name = doc["metadata"]["name"]
        create_tgs(api, namespace, doc)
        rs = wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")
        wait_for(lambda: reconciles(scraped(), "applied") == 1, "reconciles_total{outcome=applied} to count it")
        wait_for(lambda: scraped()[("textgen_operator_managed_textgenservices", ())] == 1, "the managed gauge",
                 timeout=30)

        api.delete_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name)
        wait_for(lambda: (r := get(api, namespace, C.RAYSERVICE_PLURAL, name)) and
                 r["metadata"]["uid"] != rs["metadata"]["uid"], "the RayService to come back")
        after = wait_for(lambda: (s := scraped()) and drift_repairs(s, "RayService") >= 1 and s,
                         "drift_repairs_total{kind=RayService} to count the re-create")
        assert reconciles(after, "applied") == 1  # the re-create was a repair, not a reconcile
        assert reconciles(after, "error") == 0 and reconciles(after, "invalid") == 0
        errors = {h: after[("textgen_operator_handler_errors_total", (("handler", h),))] for h in metrics.HANDLERS}
        assert errors == dict.fromkeys(metrics.HANDLERS, 0), log.read_text()[-3000:]
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
