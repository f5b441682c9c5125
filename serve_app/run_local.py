"""The local launcher (``make run``, and ``make bench`` through bench/servers.py): start a Ray head in this process,
deploy a Serve config file with Ray's own ``serve run``, serve until SIGINT/SIGTERM.

    python -m serve_app.run_local [--config serve_app/config/local.yaml] [--port 8000] [--no-dashboard]
        [--model-dir DIR] [--replicas N] [--cpus C] [--app-args JSON] [--ready-file PATH] [--private-temp-dir]

The config file has the schema of a RayService ``serveConfigV2`` (what the operator writes on Kubernetes), so the
local run and the cluster run deploy the same application the same way: the config goes to the Serve controller,
which imports ``serve_app.app:build_app`` with the ``args`` and applies each deployment's options. The benchmark's
options (``--model-dir`` ... ``--private-temp-dir``) pin its weights, replicas and CPU share on top
(serve_app.launch_config) and write a JSON line to ``--ready-file`` once the application is RUNNING (or failed).
On SIGINT/SIGTERM it shuts Serve down, then the Ray head it started, and exits 0.

Ray's ``serve run`` deploys the config; the Ray head stays ours because ``serve run config.yaml`` alone starts one
that cannot be bound to 127.0.0.1 or given a CPU count, exits 0 when the deploy fails, never says when the app
is RUNNING, and ends without shutting Serve down on SIGTERM (only on Ctrl-C). An in-process head, not
``ray start --head``: it ends with this process, and ``ray stop`` would stop every Ray on the machine.

Ray token authentication is on by default (``--ray-auth token``): a fresh token is written to
``.cache/ray/auth_token.<pid>`` (mode 0600, removed on exit; one per run, so two runs never share one) and the Ray
head, its workers and this driver read it through ``RAY_AUTH_TOKEN_PATH``; the dashboard/job API and the GCS refuse
callers without it. Binding to loopback alone would not do: Ray's GCS, raylet and worker ports listen on every
address whatever the node IP. The inherited ``RAY_AUTH_MODE`` (the Makefile exports ``disabled`` for the tests) is
not used here; ``--ray-auth disabled`` is.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from textgen_contract import APP_NAME

from serve_app.launch_config import DEFAULT_CONFIG, ROOT, apply_overrides, load_serve_config  # noqa: F401 - re-exported
from serve_app.openmp import apply_replica_env

TOKEN_DIR = ROOT / ".cache" / "ray"
# Requests and token streams pass through the object store only as small messages; Ray's default (30% of RAM)
# would reserve gigabytes of /dev/shm next to the benchmark's peers.
OBJECT_STORE_BYTES = 256 * 2**20


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


def serve_run_command(config_path: Path, gcs_address: str) -> list:
    """Ray's maintained `serve run` CLI, submitting the config to the Ray head at `gcs_address` and returning.

    Ray has no public Python call that deploys a config file (ray-project/ray#41359: `serve.run` takes only an
    Application, so the config's per-deployment options would have to be re-applied by hand); the CLI starts Serve
    with the config's http_options/proxy_location and hands the whole config to the controller, as KubeRay does.
    """
    return [sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", "--address", gcs_address,
            str(config_path)]


def application_report(app_status: Any) -> Dict[str, Any]:
    """What `serve.status()` says about one application, as JSON-able values (for the ready file)."""
    def plain(value: Any) -> str:
        return str(getattr(value, "value", value))

    return {"message": app_status.message,
            "deployments": {name: {"status": plain(d.status),
                                   "replicas": {plain(k): v for k, v in d.replica_states.items()}}
                            for name, d in app_status.deployments.items()}}


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _say(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def _announce_model(base: str) -> None:
    """Say what is served, loudly when the weights are random-initialised."""
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


def parse_args(argv: Optional[list]) -> argparse.Namespace:
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
    bench = p.add_argument_group("benchmark overrides (bench/servers.py)")
    bench.add_argument("--cpus", type=float, default=None, help="CPUs of the local Ray (default: all cores)")
    bench.add_argument("--model-dir", help="serve exactly these weights (args.model, no fallback)")
    bench.add_argument("--replicas", type=int, help="fixed model replicas sharing --cpus evenly")
    bench.add_argument("--app-args", type=json.loads, default=None, help="JSON object merged into the app's args")
    bench.add_argument("--ready-file", type=Path, help="write a JSON line here when RUNNING or failed")
    bench.add_argument("--private-temp-dir", action="store_true",
                       help="Ray's session files in a fresh /tmp/rb* directory, removed on exit")
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()
    cpus = a.cpus or os.cpu_count()
    cfg = load_serve_config(a.config, host=a.host, port=a.port, cpus=cpus)
    cfg = apply_overrides(cfg, cpus=cpus, model_dir=a.model_dir, replicas=a.replicas, app_args=a.app_args)
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

    ServeDeploySchema.model_validate(cfg)  # a bad config fails here, before a Ray head is started
    metrics_port = a.metrics_port or free_port()
    dashboard = a.dashboard and not _port_busy("127.0.0.1", a.dashboard_port)
    if a.dashboard and not dashboard:
        _say(f"port {a.dashboard_port} is busy: starting without the Ray dashboard")
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp") if a.private_temp_dir else None  # short: socket paths
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=a.dashboard_port,
        _metrics_export_port=metrics_port,
        _temp_dir=temp_dir,
        num_cpus=cpus,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level="WARNING",
    )
    stop = threading.Event()

    def _on_signal(signum, _frame):
        _say(f"got {signal.Signals(signum).name}: shutting down")
        stop.set()

    # After ray.init: Ray's driver installs its own SIGTERM handler, which would end the process without clean-up.
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    names = [app["name"] for app in cfg["applications"]]
    ours = next((app for app in cfg["applications"] if app["name"] == APP_NAME), cfg["applications"][0])
    rc = 0
    state = "NOT_STARTED"
    statuses: Dict[str, Any] = {}
    config_fd, config_file = tempfile.mkstemp(prefix="serve-config-", suffix=".yaml")
    try:
        with os.fdopen(config_fd, "w") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        _say(f"Ray head up in {time.monotonic() - t0:.1f}s; deploying {', '.join(names)} from {a.config} "
             "with `serve run`")
        deadline = time.monotonic() + a.deploy_timeout
        try:
            cli_rc = subprocess.run(serve_run_command(Path(config_file), ray.get_runtime_context().gcs_address),
                                    cwd=ROOT, timeout=a.deploy_timeout).returncode
        except subprocess.TimeoutExpired:
            cli_rc = "timed out"
        submitted = serve.status().applications
        if cli_rc != 0 or not all(n in submitted for n in names):
            # `serve run` exits 0 after printing a traceback when the submission itself failed.
            _say(f"ERROR: `serve run` (exit code {cli_rc}) did not submit {', '.join(names)}; its output is above")
            state, rc = "SUBMIT_FAILED", 1
            stop.set()
        last = None
        while not stop.is_set():
            statuses = {n: serve.status().applications.get(n) for n in names}
            states = {n: (str(getattr(s.status, "value", s.status)) if s else "NOT_STARTED")
                      for n, s in statuses.items()}
            state = states.get(ours["name"], "NOT_STARTED")
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
        if a.ready_file is not None and (rc or not stop.is_set()):
            info = {"status": state, "pid": os.getpid(), "temp_dir": temp_dir, "args": ours.get("args", {}),
                    "deployment_options": ours.get("deployments", [])}
            if statuses.get(ours["name"]) is not None:
                info.update(application_report(statuses[ours["name"]]))
            a.ready_file.write_text(json.dumps(info) + "\n")
            _say(f"ready file {a.ready_file}: {json.dumps(info)}")
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
            Path(config_file).unlink(missing_ok=True)
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
        _say("stopped.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
