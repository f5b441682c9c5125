"""`make run`'s Ray is closed by token authentication (serve_app.run_local.ray_auth_env), checked on a real local Ray:
its job API refuses `POST /api/jobs/` without the token (401) or with a wrong one (403) and accepts the right one.

The Ray head runs in a child process with the environment `make run` gives it, so this session's own Ray (the other
serve tests run it with RAY_AUTH_MODE=disabled) is untouched; a Ray of another session on the machine is never
addressed (free ports, and the child's processes are told apart by the token path in their environment).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serve_app.run_local import free_port, ray_auth_banner, ray_auth_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CHILD = """
import sys, ray
ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]),
         _node_ip_address="127.0.0.1", num_cpus=1, logging_level="WARNING", log_to_driver=False)
print("RAY READY", flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


def post_job(port: int, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/", method="POST",
                                 data=json.dumps({"entrypoint": "echo hello"}).encode(),
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[-1000:]}
    except OSError:  # not listening yet
        return 0, {}


def test_ray_auth_env_writes_a_private_fresh_token(tmp_path):
    path = tmp_path / "ray" / "auth_token"
    env = ray_auth_env("token", path)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    first = path.read_text()
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    ray_auth_env("token", path)
    assert path.read_text() != first  # every run gets its own token
    assert "ON" in ray_auth_banner(env, 8265) and str(path) in ray_auth_banner(env, 8265)
    assert ray_auth_env("disabled", path) == {"RAY_AUTH_MODE": "disabled"}
    assert "OFF" in ray_auth_banner({"RAY_AUTH_MODE": "disabled"}, 8265)
    with pytest.raises(ValueError):
        ray_auth_env("tokn", path)


def test_local_ray_with_token_auth_refuses_jobs_without_the_token(tmp_path):
    token_path = tmp_path / "auth_token"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(ray_auth_env("token", token_path), RAY_USAGE_STATS_ENABLED="0")
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout.readline().strip() == "RAY READY" or pytest.fail(child.stdout.read()[-3000:])
        deadline = time.monotonic() + 120
        while (code := post_job(port, None)[0]) != 401 and time.monotonic() < deadline:
            assert child.poll() is None, "the Ray child exited"
            time.sleep(1)  # the dashboard's HTTP server comes up a little after ray.init returns
        assert code == 401
        assert post_job(port, "not-the-token")[0] == 403
        status, body = post_job(port, token_path.read_text())
        while status == 500 and time.monotonic() < deadline:  # authorized, but the job agent is not up yet
            time.sleep(1)
            status, body = post_job(port, token_path.read_text())
        assert status == 200 and body["submission_id"].startswith("raysubmit_"), body
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
