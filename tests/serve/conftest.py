"""Fixtures of the serving tests: one real local Ray + Serve per module (the stand-in models: tests/conftest.py)."""

import os

import pytest

from serve_app.run_local import free_port
from tests.support import ROOT


@pytest.fixture(scope="module")
def ray_serve(tiny_model_dir):
    """A real local Ray (127.0.0.1, free ports, no dashboard) with Serve's proxy on a free HTTP port.

    Yields a dict: ``url`` (HTTP base), ``metrics_url`` (Prometheus export), ``port``.
    One Ray session per module that needs it (only the HTTP module) keeps the runtime small.
    """
    import ray
    from ray import serve

    # Replicas inherit this environment from the Ray processes started here.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if ray.is_initialized():
        ray.shutdown()
    http_port, metrics_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield {
            "url": f"http://127.0.0.1:{http_port}",
            "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
            "port": http_port,
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
