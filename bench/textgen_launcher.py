"""Run our serve app on a private local Ray, the way ``serve run <config.yaml>`` does, for the benchmark.

Started as a subprocess by ``bench/servers.py``; runs until SIGTERM/SIGINT, then shuts Serve and
Ray down. It starts its OWN Ray (``address="local"``, its own temp dir, no dashboard), so it never
attaches to a Ray that someone else on the machine is running.

The Serve config is the project's ``serve_app/config/local.yaml`` when it exists (the same schema as
a RayService ``serveConfigV2``), else the serving contract in serve_app/contract.py (application ``textgen``,
``serve_app.app:build_app``). :func:`build_serve_config` then pins what the benchmark controls: the
HTTP host/port, the model directory, and the model deployment's replica count, CPU share and torch
threads (``cpus / replicas`` each).

When the application is RUNNING, a JSON line is written to ``--ready-file``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "serve_app" / "config" / "local.yaml"
sys.path.insert(0, str(ROOT))  # run as a script: the project's serve_app (the working tree) is importable
from serve_app.contract import (  # noqa: E402
    APP_IMPORT_PATH,
    APP_NAME,
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    ROUTE_PREFIX,
    SERVE_PORT,
)


def default_serve_config() -> dict:
    """The serving contract's names (serve_app/contract.py), used when serve_app/config/local.yaml is not there."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": SERVE_PORT},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": ROUTE_PREFIX,
                "import_path": APP_IMPORT_PATH,
                "args": {},
                "deployments": [],
            }
        ],
    }


def build_serve_config(
    base: Optional[dict],
    *,
    port: int,
    model_dir: str,
    replicas: int,
    cpus: float,
    app_args: Optional[dict] = None,
) -> dict:
    """Pure: the benchmark's Serve config from a base config (``local.yaml``) and its overrides."""
    cfg = copy.deepcopy(base) if base else default_serve_config()
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    http = dict(cfg.get("http_options") or {})
    http.update(host="127.0.0.1", port=int(port))
    cfg["http_options"] = http
    apps = cfg.get("applications") or []
    app = next((a for a in apps if a.get("name") == APP_NAME), None)
    if app is None:
        app = default_serve_config()["applications"][0]
        apps.append(app)
    cfg["applications"] = [app]  # only ours
    # The working tree is on PYTHONPATH: no packaging of a working_dir; env_vars a config sets for the replicas
    # stay. (The OpenMP runtime comes from this process's environment: apply_replica_env in main.)
    env_vars = (app.pop("runtime_env", None) or {}).get("env_vars")
    if env_vars:
        app["runtime_env"] = {"env_vars": dict(env_vars)}
    share = cpus / replicas
    args = dict(app.get("args") or {})
    args.update(app_args or {})
    args["model"] = model_dir
    args.pop("fallback_model_dir", None)  # the benchmark must load exactly the given weights
    args["torch_threads"] = max(1, int(share))
    app["args"] = args
    deps = [dict(d) for d in (app.get("deployments") or [])]
    model = next((d for d in deps if d.get("name") == MODEL_DEPLOYMENT), None)
    if model is None:
        model = {"name": MODEL_DEPLOYMENT}
        deps.append(model)
    model.pop("autoscaling_config", None)
    model["num_replicas"] = int(replicas)
    actor = dict(model.get("ray_actor_options") or {})
    actor["num_cpus"] = share
    model["ray_actor_options"] = actor
    ingress = next((d for d in deps if d.get("name") == INGRESS_DEPLOYMENT), None)
    if ingress is not None:
        # The model replicas own the cores; the ingress is light (as in the app's own default).
        ing_actor = dict(ingress.get("ray_actor_options") or {})
        ing_actor["num_cpus"] = 0
        ingress["ray_actor_options"] = ing_actor
        ingress.pop("autoscaling_config", None)
        ingress["num_replicas"] = 1
    app["deployments"] = deps
    return cfg


def load_base_config(path: Optional[Path]) -> Optional[dict]:
    if path is None or not Path(path).is_file():
        return None
    import yaml

    return yaml.safe_load(Path(path).read_text())


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1))
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--app-args", default="{}", help="JSON object merged into the application args")
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--deploy-timeout", type=float, default=600.0)
    a = p.parse_args(argv)

    stop = {"flag": False}

    def _on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    base = load_base_config(a.config)
    cfg = build_serve_config(
        base, port=a.port, model_dir=a.model_dir, replicas=a.replicas, cpus=a.cpus,
        app_args=json.loads(a.app_args),
    )
    print(f"[textgen_launcher] config source: {a.config if base else 'serve_app.contract'}", flush=True)
    print(f"[textgen_launcher] serve config: {json.dumps(cfg)}", flush=True)

    from serve_app.openmp import apply_replica_env

    print(f"[textgen_launcher] replica environment: {apply_replica_env()}", flush=True)  # before Ray starts them
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(
        address="local",
        num_cpus=a.cpus,
        include_dashboard=False,
        namespace="serve",
        _node_ip_address="127.0.0.1",
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=temp_dir,
    )
    # Ray's driver installs a C-level SIGTERM handler that ends the process after logging; take the
    # signals back so that SIGTERM shuts Serve and Ray down cleanly.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    status = "UNKNOWN"
    try:
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
        )
        client.deploy_apps(schema, _blocking=False)
        deadline = time.monotonic() + a.deploy_timeout
        while not stop["flag"] and time.monotonic() < deadline:
            app_status = serve.status().applications.get(APP_NAME)
            status = str(getattr(app_status, "status", "NOT_STARTED"))
            if status.endswith("RUNNING") or status.endswith("DEPLOY_FAILED"):
                break
            time.sleep(0.5)
        app_status = serve.status().applications.get(APP_NAME)
        info: dict[str, Any] = {"status": status, "pid": os.getpid(), "temp_dir": temp_dir,
                                "args": cfg["applications"][0]["args"],
                                "deployment_options": cfg["applications"][0]["deployments"]}
        if app_status is not None:
            info["message"] = app_status.message
            info["deployments"] = {
                name: {"status": str(d.status), "replicas": {str(k): v for k, v in d.replica_states.items()}}
                for name, d in app_status.deployments.items()
            }
        a.ready_file.write_text(json.dumps(info) + "\n")
        print(f"[textgen_launcher] {json.dumps(info)}", flush=True)
        if not status.endswith("RUNNING"):
            return 1
        while not stop["flag"]:
            time.sleep(0.5)
        return 0
    finally:
        print("[textgen_launcher] shutting down", flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
