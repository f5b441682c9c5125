"""The local launcher (`make run`, and `make bench` through bench/servers.py) end to end: a subprocess starts Ray,
deploys a Serve config file with `serve run`, answers the README's curl, and shuts everything down on a signal; with
the benchmark's overrides it serves the pinned model and replicas and writes the ready file, also when the deploy
fails."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.launch_config import DEFAULT_CONFIG, apply_overrides, load_serve_config
from serve_app.run_local import free_port
from tests.support import poll_until, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN_DIR = ROOT / ".cache" / "ray"


def start_launcher(args, tmp_path, **env_overrides):
    env = dict(os.environ, RAY_METRICS_PORT=str(free_port()), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1", **env_overrides)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve_app.run_local", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stop_launcher(proc, signum=signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        return proc.wait()


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def get_ok(url: str, proc, timeout: float = 300):
    """The first 200 answer of `url` (None when the launcher exited or `timeout` passed)."""
    def answered():
        if proc.poll() is not None:
            return "exited"
        try:
            r = httpx.get(url, timeout=30)
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 else None

    r = poll_until(answered, timeout=timeout, interval=1)
    return None if r == "exited" else r


def test_overrides_pin_the_benchmark_model_replicas_and_cpus():
    from ray.serve.schema import ServeDeploySchema

    base = load_serve_config(DEFAULT_CONFIG, port=12345, cpus=2)
    assert apply_overrides(base, cpus=2) == base  # nothing given, nothing changed
    cfg = apply_overrides(base, cpus=2, model_dir="/m", replicas=2, app_args={"max_batch_size": 8})
    ServeDeploySchema.model_validate(cfg)  # still a valid Serve config
    assert cfg["http_options"] == {**base["http_options"], "port": 12345}
    (app,) = cfg["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    assert app["args"]["model"] == "/m" and "fallback_model_dir" not in app["args"]
    assert app["args"]["max_batch_size"] == 8 and app["args"]["torch_threads"] == 1
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["GPT2Model"]["num_replicas"] == 2 and deps["GPT2Model"]["ray_actor_options"]["num_cpus"] == 1.0
    assert deps["TextGenAPI"]["num_replicas"] == 1 and deps["TextGenAPI"]["ray_actor_options"]["num_cpus"] == 0
    base_deps = {d["name"]: d for d in base["applications"][0]["deployments"]}
    for name in deps:  # the config's other options stay
        assert deps[name]["max_ongoing_requests"] == base_deps[name]["max_ongoing_requests"]
    assert "fallback_model_dir" in base["applications"][0]["args"]  # the input is not modified
    one = apply_overrides(base, cpus=2, model_dir="/m", replicas=1)
    assert one["applications"][0]["args"]["torch_threads"] == 2
    assert one["applications"][0]["deployments"][0]["ray_actor_options"]["num_cpus"] == 2.0
    with pytest.raises(ValueError):
        apply_overrides(base, cpus=2, replicas=0)
    with pytest.raises(ValueError, match="no application"):
        apply_overrides({"applications": [{"name": "other", "import_path": "x:y"}]}, cpus=2, replicas=1)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_run_local_deploys_the_config_serves_the_curl_and_stops_cleanly(tiny_model_dir, tmp_path):
    """`make run`'s defaults: token auth, the dashboard, Intel OpenMP; the deployed options are the config's."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = cfg["applications"][0]
    # The Hub id, with the tiny stand-in as the fallback: exercises the offline path too.
    app["args"].update(fallback_model_dir=str(tiny_model_dir), max_batch_size=2, max_tokens_limit=32,
                       default_max_tokens=8)
    model_cpus = min(2, os.cpu_count())
    # Values the app's code would not choose (build_app: 2 x max_batch_size, args.max_queued_requests, 1024), so the
    # deployed options below can only have come from the config.
    options = {"GPT2Model": {"num_replicas": 1, "max_ongoing_requests": 7, "max_queued_requests": 9,
                             "ray_actor_options": {"num_cpus": model_cpus}},
               "TextGenAPI": {"num_replicas": 1, "max_ongoing_requests": 33, "max_queued_requests": 11,
                              "ray_actor_options": {"num_cpus": 0}}}
    app["deployments"] = [{"name": name, **opts} for name, opts in options.items()]
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    port, dashboard_port = free_port(), free_port()
    proc, log = start_launcher(["--config", str(config), "--dashboard-port", str(dashboard_port)], tmp_path,
                               SERVE_PORT=str(port), RAY_DASHBOARD="1")
    token = TOKEN_DIR / f"auth_token.{proc.pid}"
    try:
        r = get_ok(f"http://127.0.0.1:{port}/generate?query=Hello%20friend%2C%20how", proc)
        assert r is not None, log.read_text()[-3000:]
        assert r.json()[0]["generated_text"].startswith("Hello friend, how")
        card = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()["data"][0]
        assert card["id"] == "gpt2-tiny-random-init" and card["random_init"]
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=30).json()
        # make venv installs intel-openmp: the model replica runs torch on Intel OpenMP, not libgomp
        assert stats["openmp"] == "intel"
        # No torch_threads in args: the replica takes its CPU share, i.e. the config's ray_actor_options.num_cpus.
        assert stats["torch_threads"] == model_cpus
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(), "the launcher's 'Ctrl-C to stop' line", timeout=30)
        text = log.read_text()
        assert "Submitted deploy config successfully" in text  # Ray's own `serve run` deployed it
        assert f'curl "http://127.0.0.1:{port}/generate?query=Hello%20friend%2C%20how"' in text
        assert "RANDOM-INITIALISED WEIGHTS, NOT GPT-2" in text
        # Ray token auth is on, with this run's own private token file (removed on exit, checked below)
        assert "Ray token authentication ON" in text and str(token) in text
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        # Serve's REST API (the dashboard, behind the token) reports what the controller deployed.
        details = httpx.get(f"http://127.0.0.1:{dashboard_port}/api/serve/applications/", timeout=30,
                            headers={"Authorization": f"Bearer {token.read_text()}"}).json()
        deployed = details["applications"]["textgen"]["deployments"]
        for name, opts in options.items():
            got = deployed[name]["deployment_config"]
            assert {k: got[k] for k in opts if k != "ray_actor_options"} == \
                {k: v for k, v in opts.items() if k != "ray_actor_options"}, name
            assert got["ray_actor_options"]["num_cpus"] == opts["ray_actor_options"]["num_cpus"], name
            assert len(deployed[name]["replicas"]) == opts["num_replicas"], name
    finally:
        rc = stop_launcher(proc)
    assert rc == 0, log.read_text()[-3000:]
    assert "[run] stopped." in log.read_text()
    assert not token.exists()
    assert port_closed(port), "the HTTP port is still open after shutdown"


def start_bench_launcher(model_dir: Path, tmp_path: Path, replicas: int, app_args: dict):
    """The launcher as bench/servers.py starts it (one CPU per replica); returns (proc, log, port, ready file)."""
    port, ready = free_port(), tmp_path / "ready.json"
    proc, log = start_launcher(
        ["--port", str(port), "--no-dashboard", "--model-dir", str(model_dir), "--replicas", str(replicas),
         "--cpus", str(replicas), "--app-args", json.dumps(app_args), "--ready-file", str(ready),
         "--private-temp-dir"], tmp_path)
    return proc, log, port, ready


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_benchmark_overrides_and_ready_file(tiny_model_dir, tmp_path):
    """What bench/servers.py starts: pinned weights, 2 replicas on 2 CPUs, a private temp dir; SIGTERM stops it."""
    proc, log, port, ready = start_bench_launcher(tiny_model_dir, tmp_path, 2, {"max_batch_size": 4})
    try:
        assert poll_until(lambda: ready.is_file() or proc.poll() is not None, timeout=400, interval=1)
        assert ready.is_file(), log.read_text()[-3000:]
        info = json.loads(ready.read_text())
        assert info["status"] == "RUNNING" and info["pid"] == proc.pid
        assert info["deployments"]["GPT2Model"]["replicas"] == {"RUNNING": 2}
        assert info["deployments"]["TextGenAPI"]["replicas"] == {"RUNNING": 1}
        assert info["args"]["model"] == str(tiny_model_dir) and "fallback_model_dir" not in info["args"]
        assert info["args"]["max_batch_size"] == 4 and info["args"]["torch_threads"] == 1
        options = {d["name"]: d for d in info["deployment_options"]}
        assert options["GPT2Model"]["ray_actor_options"]["num_cpus"] == 1.0
        temp_dir = Path(info["temp_dir"])
        assert temp_dir.parent == Path("/tmp") and temp_dir.name.startswith("rb")
        assert (temp_dir / "session_latest").exists()  # Ray's session files are in the private temp dir
        assert get_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60) is not None
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=30).json()
        assert stats["model"] == "gpt2-tiny-random-init" and stats["torch_threads"] == 1
    finally:
        rc = stop_launcher(proc, signal.SIGTERM)
    assert rc == 0, log.read_text()[-3000:]
    assert not temp_dir.exists() and not (TOKEN_DIR / f"auth_token.{proc.pid}").exists()
    assert port_closed(port)


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_failed_deploy_writes_the_ready_file_and_exits_1(tiny_model_dir, tmp_path):
    proc, log, port, ready = start_bench_launcher(tiny_model_dir, tmp_path, 1, {"no_such_arg": 1})
    rc = proc.wait(timeout=360)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    info = json.loads(ready.read_text())
    assert info["status"] == "DEPLOY_FAILED" and "no_such_arg" in info["message"]  # AppArgs rejects unknown keys
    assert "ERROR: application textgen failed" in text and "[run] stopped." in text
    assert not Path(info["temp_dir"]).exists() and not (TOKEN_DIR / f"auth_token.{proc.pid}").exists()


def test_run_local_refuses_a_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "serve_app.run_local", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already in use" in proc.stdout
