"""`make run`'s launcher end to end: a subprocess starts Ray, deploys a Serve config file, answers the
README's curl, and shuts everything down on SIGINT."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.run_local import free_port

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_run_local_serves_the_curl_and_stops_cleanly(tiny_model_dir, tmp_path):
    cfg = yaml.safe_load((ROOT / "serve_app" / "config" / "local.yaml").read_text())
    app = cfg["applications"][0]
    # The Hub id, with the tiny stand-in as the fallback: exercises the offline path too.
    app["args"].update(fallback_model_dir=str(tiny_model_dir), max_batch_size=2, max_tokens_limit=32,
                       default_max_tokens=8)
    for dep in app["deployments"]:
        dep.setdefault("ray_actor_options", {})["num_cpus"] = 0 if dep["name"] == "TextGenAPI" else 1
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = dict(os.environ, SERVE_PORT=str(port), RAY_DASHBOARD="0", RAY_METRICS_PORT=str(free_port()),
               HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve_app.run_local", "--config", str(config)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def answered():
            if proc.poll() is not None:
                return "exited"
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/generate?query=Hello%20friend%2C%20how", timeout=30)
            except httpx.HTTPError:
                return None
            return r if r.status_code == 200 else None

        r = wait_for(answered, timeout=300, interval=1)
        assert r not in (None, "exited"), log.read_text()[-3000:]
        assert r.json()[0]["generated_text"].startswith("Hello friend, how")
        card = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()["data"][0]
        assert card["id"] == "gpt2-tiny-random-init" and card["random_init"]
        # make venv installs intel-openmp: the model replica runs torch on Intel OpenMP, not libgomp
        assert httpx.get(f"http://127.0.0.1:{port}/stats", timeout=30).json()["openmp"] == "intel"
        wait_for(lambda: "Ctrl-C to stop" in log.read_text(), timeout=30)
        text = log.read_text()
        assert f'curl "http://127.0.0.1:{port}/generate?query=Hello%20friend%2C%20how"' in text
        assert "RANDOM-INITIALISED WEIGHTS, NOT GPT-2" in text
        # Ray token auth is on, with this run's own private token file (removed on exit, checked below)
        token = ROOT / ".cache" / "ray" / f"auth_token.{proc.pid}"
        assert "Ray token authentication ON" in text and str(token) in text and token.stat().st_mode & 0o077 == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
            rc = proc.wait()
    assert rc == 0, log.read_text()[-3000:]
    assert "[run] stopped." in log.read_text()
    assert not (ROOT / ".cache" / "ray" / f"auth_token.{proc.pid}").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the HTTP port is still open after shutdown"


def test_run_local_refuses_a_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "serve_app.run_local", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already in use" in proc.stdout
