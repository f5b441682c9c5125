"""``make run``: start a local Ray head in this process, deploy a Serve config file, serve until Ctrl-C.

    python -m serve_app.run_local [--config serve_app/config/local.yaml] [--port 8000] [--no-dashboard]

The config file has the schema of a RayService ``serveConfigV2`` (what the operator writes on
Kubernetes), so the local run and the cluster run deploy the same application the same way: the
config goes to the Serve controller, which imports ``serve_app.app:build_app`` with the ``args``.
On SIGINT/SIGTERM it shuts Serve down, then the Ray head it started, and exits 0.

Ray token authentication is on by default (``--ray-auth token``): a fresh token is written to
``.cache/ray/auth_token.<pid>`` (mode 0600, removed on exit; one per run, so two runs never share one) and the Ray head, its workers and this driver read it through
``RAY_AUTH_TOKEN_PATH``; the dashboard/job API and the GCS refuse callers without it. Binding to loopback alone
would not do: Ray's GCS, raylet and worker ports listen on every address whatever the node IP. The inherited
``RAY_AUTH_MODE`` (the Makefile exports ``disabled`` for the tests) is not used here; ``--ray-auth disabled`` is.
"""

import argparse
import copy
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from serve_app.openmp import apply_replica_env

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "serve_app" / "config" / "local.yaml"
TOKEN_DIR = ROOT / ".cache" / "ray"
PATH_ARGS = ("model", "fallback_model_dir")


def load_serve_config(path: Path, *, root: Path = ROOT, host: Optional[str] = None, port: Optional[int] = None,
                      cpus: Optional[int] = None) -> Dict[str, Any]:
    """Read a Serve config and make it runnable here (pure; unit-tested).

    Relative paths in the apps' ``args`` (``model``, ``fallback_model_dir``) that exist under ``root``
    become absolute (a Hub id such as ``gpt2`` stays as is); ``host``/``port`` override
    ``http_options``; ``ray_actor_options.num_cpus`` is capped at ``cpus`` so it schedules here.
    """
    cfg = copy.deepcopy(yaml.safe_load(Path(path).read_text()))
    http = cfg.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    for app in cfg.get("applications", []):
        args = app.get("args") or {}
        for key in PATH_ARGS:
            val = args.get(key)
            if isinstance(val, str) and val and not os.path.isabs(val):
                candidate = (root / val).resolve()
                if key == "fallback_model_dir" or candidate.exists():
                    args[key] = str(candidate)
        for dep in app.get("deployments", []) or []:
            opts = dep.get("ray_actor_options") or {}
            if cpus is not None and "num_cpus" in opts and opts["num_cpus"] > cpus:
                opts["num_cpus"] = cpus
    return cfg


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it); shared by the benchmark and the tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_auth_env(mode: str, token_path: Path) -> Dict[str, str]:
    """The environment that starts a local Ray head with auth `mode` (``token`` or ``disabled``).

    ``token``: writes a fresh random token to `token_path` (0600, replacing an older one) and points Ray at it.
    """
    if mode == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    if mode != "token":
        raise ValueError(f"Ray auth mode must be token or disabled, not {mode!r}")
    token_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    os.chmod(token_path, 0o600)  # an older file may have had wider permissions
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def ray_auth_banner(env: Dict[str, str], dashboard_port: int) -> str:
    """What `make run` says about who can reach the local Ray."""
    if env["RAY_AUTH_MODE"] == "token":
        path = env["RAY_AUTH_TOKEN_PATH"]
        return (f"Ray token authentication ON: the Ray dashboard/job API (127.0.0.1:{dashboard_port}) and the GCS "
                f"refuse callers without the token in {path} (for the ray/serve CLIs: export RAY_AUTH_TOKEN_PATH={path}"
                "). Serve's HTTP port is not behind the token.")
    return ("WARNING: Ray token authentication OFF (--ray-auth disabled): Ray's GCS, raylet and worker ports listen on "
            "every address, so anyone who can reach this machine can run code here. Only the dashboard is on "
            "127.0.0.1.")


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _say(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def _announce_model(base: str) -> None:
    """Say what is served, loudly when the weights are random-initialised."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as r:
            card = json.load(r)["data"][0]
    except Exception as exc:  # noqa: BLE001 - informative only
        _say(f"(could not read /v1/models: {exc})")
        return
    if card.get("random_init"):
        bar = "!" * 78
        print(f"\n{bar}\n!!! SERVING '{card['id']}': RANDOM-INITIALISED WEIGHTS, NOT GPT-2.\n"
              f"!!! {card.get('description', '')}\n{bar}\n", flush=True)
    else:
        _say(f"serving model '{card['id']}' from {card.get('source')}")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config file (serveConfigV2 schema)")
    p.add_argument("--host", default=os.environ.get("SERVE_HOST"), help="HTTP host (default: from the config)")
    p.add_argument("--port", type=int, default=os.environ.get("SERVE_PORT"), help="HTTP port (default: config)")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction,
                   default=os.environ.get("RAY_DASHBOARD", "1") != "0",
                   help="start the Ray dashboard on 127.0.0.1 (needed by `serve status`; ~1 GB RSS)")
    p.add_argument("--dashboard-port", type=int, default=int(os.environ.get("RAY_DASHBOARD_PORT", "8265")))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("RAY_METRICS_PORT", "0")) or None,
                   help="Prometheus metrics export port (default: a free port)")
    p.add_argument("--ray-auth", choices=("token", "disabled"), default=os.environ.get("TEXTGEN_RAY_AUTH", "token"),
                   help="Ray token authentication (default token, written to .cache/ray/auth_token.<pid>)")
    p.add_argument("--deploy-timeout", type=float, default=900.0, help="seconds to wait for RUNNING")
    a = p.parse_args(argv)

    t0 = time.monotonic()
    cfg = load_serve_config(a.config, host=a.host, port=a.port, cpus=os.cpu_count())
    http = cfg["http_options"]
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    if _port_busy(host, port):
        _say(f"ERROR: {host}:{port} is already in use; pick another with SERVE_PORT=... (or --port)")
        return 2

    # Workers are started by the Ray head this process launches, so they inherit this environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Before `import ray`: Ray reads its auth mode when its config is first loaded.
    token_path = TOKEN_DIR / f"auth_token.{os.getpid()}"
    auth = ray_auth_env(a.ray_auth, token_path)
    for stale in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):  # a token from the caller's shell would win over ours
        os.environ.pop(stale, None)
    os.environ.update(auth)
    _say(ray_auth_banner(auth, a.dashboard_port))
    omp = apply_replica_env()
    _say("OpenMP for the model replicas: " + (f"Intel OpenMP ({omp['LD_PRELOAD'].split(':')[0]})" if "LD_PRELOAD" in omp
                                               else "GNU libgomp, OMP_WAIT_POLICY=" + omp["OMP_WAIT_POLICY"]))
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    metrics_port = a.metrics_port or free_port()
    dashboard = a.dashboard and not _port_busy("127.0.0.1", a.dashboard_port)
    if a.dashboard and not dashboard:
        _say(f"port {a.dashboard_port} is busy: starting without the Ray dashboard")
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=a.dashboard_port,
        _metrics_export_port=metrics_port,
        num_cpus=os.cpu_count(),
        logging_level="WARNING",
    )
    stop = threading.Event()

    def _on_signal(signum, _frame):
        _say(f"got {signal.Signals(signum).name}: shutting down")
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rc = 0
    try:
        serve.start(proxy_location=cfg.get("proxy_location", "HeadOnly"), http_options=http)
        schema = ServeDeploySchema.model_validate(cfg) if hasattr(ServeDeploySchema, "model_validate") \
            else ServeDeploySchema.parse_obj(cfg)
        client = serve.context._get_global_client()
        client.deploy_apps(schema)
        names = [app["name"] for app in cfg["applications"]]
        _say(f"Ray head up in {time.monotonic() - t0:.1f}s; deploying {', '.join(names)} from {a.config}")
        deadline = time.monotonic() + a.deploy_timeout
        last = None
        while not stop.is_set():
            statuses = {n: serve.status().applications.get(n) for n in names}
            states = {n: (str(getattr(s.status, "value", s.status)) if s else "NOT_STARTED")
                      for n, s in statuses.items()}
            if states != last:
                _say("status: " + ", ".join(f"{n}={s}" for n, s in states.items()))
                last = states
            if all(s == "RUNNING" for s in states.values()):
                break
            failed = {n: statuses[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
            if failed:
                for n, msg in failed.items():
                    _say(f"ERROR: application {n} failed:\n{msg}")
                rc = 1
                stop.set()
            elif time.monotonic() > deadline:
                _say(f"ERROR: not RUNNING after {a.deploy_timeout:.0f}s")
                rc = 1
                stop.set()
            stop.wait(1.0)
        if not stop.is_set():
            base = f"http://{host}:{port}"
            _say(f"ready in {time.monotonic() - t0:.1f}s. Try:")
            print(f'\n  curl "{base}/generate?query=Hello%20friend%2C%20how"\n', flush=True)
            _say(f"OpenAI-style: {base}/v1/completions, models: {base}/v1/models, health: {base}/healthz")
            _say(f"Prometheus metrics: http://127.0.0.1:{metrics_port}/metrics"
                 + (f"; Ray dashboard: http://127.0.0.1:{a.dashboard_port}" if dashboard else ""))
            _announce_model(base)
            _say("Ctrl-C to stop.")
            stop.wait()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            token_path.unlink(missing_ok=True)
        _say("stopped.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
