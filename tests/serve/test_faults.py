"""Faults injected into the engine of a real model replica on a real local Ray (tiny random-init GPT-2): a step that
fails mid-generation is a 503 + Retry-After (in-band for a stream) and the engine goes on; a hung step fails the
product's health check, Serve replaces the replica, and in-flight clients get 503/504 within the request timeout.

Faults are armed through DeploymentHandle methods of `FaultyGPT2Model` (tests/serve/fault_injection.py), never over
HTTP. The hung-step test replaces the model replica, so it runs last.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest
import textgen_contract as contract

from serve_app.app import RETRY_AFTER_S
from serve_app.config import AppArgs
from tests.serve.fault_injection import TEST_MAX_STEP_S, build_faulty_app
from tests.support import poll_until

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

MAX_TOKENS = 32
# Serve's health check: every 10 s, 3 failures in a row, then a graceful stop of up to 20 s (the hung request never
# finishes) and a new replica; the tiny model loads in seconds.
REPLACED_WITHIN_S = 150


@pytest.fixture(scope="module")
def app(ray_serve, tiny_model_dir):
    from ray import serve

    args = AppArgs(model=str(tiny_model_dir), max_batch_size=4, max_queued_requests=8, max_tokens_limit=MAX_TOKENS,
                   default_max_tokens=4)
    serve.run(build_faulty_app(args), name=contract.APP_NAME, route_prefix="/")
    client = httpx.Client(base_url=ray_serve["url"], timeout=contract.REQUEST_TIMEOUT_S)
    handle = serve.get_deployment_handle(contract.MODEL_DEPLOYMENT, app_name=contract.APP_NAME)
    yield {**ray_serve, "client": client, "model": handle}
    client.close()
    serve.delete(contract.APP_NAME)


def call(app, method: str, *args, **kwargs):
    """A method of the model replica, through its DeploymentHandle."""
    return getattr(app["model"], method).remote(*args, **kwargs).result(timeout_s=30)


def completion(max_tokens: int = MAX_TOKENS, stream: bool = False) -> dict:
    return {"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 1.0, "seed": 7, "stream": stream}


def sse_payloads(lines) -> list:
    """The JSON (or ``[DONE]``) payloads of an SSE body's ``data:`` lines."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def is_delta(payload) -> bool:
    return isinstance(payload, dict) and "choices" in payload and payload["choices"][0]["text"] != ""


def assert_503_retry_after(resp: httpx.Response):
    assert resp.status_code == 503, resp.text
    assert resp.headers.get("retry-after") == str(RETRY_AFTER_S), resp.headers
    assert resp.json()["error"]["message"], resp.text


def assert_stream_ended_in_error(payloads: list, statuses=(503,)) -> int:
    """A stream that started (200) and ended with an in-band error event, then [DONE]; returns the error's status."""
    assert payloads[-1] == "[DONE]", payloads[-3:]
    error = payloads[-2]
    assert isinstance(error, dict) and "error" in error, payloads[-3:]
    assert error["error"]["status"] in statuses and error["error"]["message"], error
    assert not any(isinstance(p, dict) and p.get("choices", [{}])[0].get("finish_reason") for p in payloads), \
        "a failed stream must not also report a normal finish"
    return error["error"]["status"]


# ------------------------------------------------------------------ a step fails mid-way: 503, the engine survives


def test_a_failed_step_mid_generation_is_a_503_and_the_replica_serves_on(app):
    client = app["client"]
    before = call(app, "stats")
    pid = before["pid"]
    # Four passes run (the stream's prompt, then three decodes: four tokens), the fifth is held.
    assert call(app, "hang_step", after=4)["armed"]
    with cf.ThreadPoolExecutor(1) as pool, client.stream("POST", "/v1/completions",
                                                         json=completion(stream=True)) as streamed:
        assert streamed.status_code == 200
        lines = streamed.iter_lines()
        seen = []
        for line in lines:
            seen += sse_payloads([line])
            if seen and is_delta(seen[-1]):
                break
        assert seen and is_delta(seen[-1]), seen
        assert poll_until(lambda: call(app, "fault_state")["holding"], timeout=30, interval=0.2)
        # A non-streaming request joins while the pass is held. Released, the held pass ends (token 5), one more
        # runs (the stream's token 6 and the new prompt's first), and the next one, decoding both, fails.
        plain = pool.submit(client.post, "/v1/completions", json=completion())
        assert poll_until(lambda: call(app, "stats")["waiting"] == 1, timeout=30, interval=0.2), call(app, "stats")
        call(app, "fail_steps", 1, after=1)
        call(app, "release_step")
        seen += sse_payloads(lines)
        plain_resp = plain.result(timeout=60)
    assert_stream_ended_in_error(seen, statuses=(503,))
    assert sum(is_delta(p) for p in seen) >= 1
    assert_503_retry_after(plain_resp)
    assert plain_resp.json()["error"]["code"] == "engine_unavailable"

    after = call(app, "stats")
    faults = call(app, "fault_state")
    assert faults["failed"] == 1 and not faults["armed"] and not faults["holding"], faults
    # One failed pass failed both requests, each after its first tokens: 6 of the stream's, 1 of the other's.
    assert after["requests_failed"] - before["requests_failed"] == 2, (before, after)
    assert after["generated_tokens_total"] - before["generated_tokens_total"] == 7, (before, after)
    assert after["pid"] == pid and after["running"] == 0 and after["waiting"] == 0

    ok = client.post("/v1/completions", json=completion(max_tokens=4))
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] >= 1
    assert client.get("/stats").json()["pid"] == pid, "the same replica must have served it"


# ------------------------------------------------------------------ a hung step: unhealthy, replaced, 503/504


def streamed_outcome(client: httpx.Client) -> tuple[int, list, float]:
    t0 = time.monotonic()
    with client.stream("POST", "/v1/completions", json=completion(stream=True)) as r:
        payloads = sse_payloads(r.iter_lines()) if r.status_code == 200 else []
        if r.status_code != 200:
            r.read()
    return r.status_code, payloads, time.monotonic() - t0


def plain_outcome(client: httpx.Client) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = client.post("/v1/completions", json=completion())
    return r, time.monotonic() - t0


def new_replica_serves(app, old_pid: int, seen: list) -> bool:
    """One short request: True once a replica other than `old_pid` answers 200. Requests routed to the hung replica
    before Serve drops it would wait for its end: a short client timeout moves on to the next try."""
    try:
        r = app["client"].post("/v1/completions", json=completion(max_tokens=2), timeout=5)
    except httpx.TimeoutException:
        seen.append("client timeout")
        return False
    seen.append(r.status_code)
    assert r.status_code in (200, 503), r.text  # never a 500 meanwhile
    if r.status_code == 503:
        assert r.headers.get("retry-after"), r.headers
        return False
    stats = app["client"].get("/stats", timeout=5)
    return stats.status_code == 200 and stats.json()["pid"] != old_pid


def model_status() -> tuple[str, str]:
    """Serve's view of the model deployment: (status, message)."""
    from ray import serve

    deployment = serve.status().applications[contract.APP_NAME].deployments[contract.MODEL_DEPLOYMENT]
    return str(deployment.status.value), deployment.message


def test_a_hung_step_fails_the_health_check_and_serve_replaces_the_replica(app):
    client = app["client"]
    old_pid = call(app, "stats")["pid"]
    assert client.get("/healthz").status_code == 200
    call(app, "hang_step")  # the next pass blocks for good
    with cf.ThreadPoolExecutor(2) as pool:
        streamed = pool.submit(streamed_outcome, client)
        plain = pool.submit(plain_outcome, client)
        assert poll_until(lambda: call(app, "fault_state")["holding"], timeout=30, interval=0.2)
        hung_at = time.monotonic()

        # The product's health signal: unhealthy once the step is older than MAX_STEP_S (lowered in this replica).
        assert poll_until(lambda: client.get("/healthz").status_code == 503, timeout=TEST_MAX_STEP_S + 20), "healthy"
        unhealthy = client.get("/healthz")
        assert unhealthy.status_code == 503 and unhealthy.headers.get("retry-after"), unhealthy.text
        assert "stuck" in unhealthy.json()["reason"], unhealthy.text  # says why, not "stopped"
        healthz_s = time.monotonic() - hung_at

        statuses: list = []
        serve_views = {model_status()}

        def replaced_yet() -> bool:
            serve_views.add(model_status())
            return new_replica_serves(app, old_pid, statuses)

        replaced = poll_until(replaced_yet, timeout=REPLACED_WITHIN_S, interval=1.0)
        replaced_s = time.monotonic() - hung_at
        assert replaced, f"no 200 from a new replica within {REPLACED_WITHIN_S} s: {statuses}"

        stream_status, payloads, stream_s = streamed.result(timeout=contract.REQUEST_TIMEOUT_S)
        plain_resp, plain_s = plain.result(timeout=contract.REQUEST_TIMEOUT_S)

    # In-flight clients of the hung replica: 503 (+ Retry-After) once Serve stops it, or 504 at the generation
    # timeout; either way before Serve's request timeout.
    assert stream_status == 200  # the stream had started (its first event came before any step)
    stream_error = assert_stream_ended_in_error(payloads, statuses=(503, 504))
    assert plain_resp.status_code in (503, 504), plain_resp.text
    if plain_resp.status_code == 503:
        assert_503_retry_after(plain_resp)
    assert max(stream_s, plain_s) < contract.REQUEST_TIMEOUT_S
    # Serve's own health check saw it: the deployment was UNHEALTHY (the product's check_health failing).
    unhealthy_views = [m for st, m in serve_views if st == "UNHEALTHY"]
    assert any("health check" in m for m in unhealthy_views), serve_views
    assert poll_until(lambda: model_status()[0] == "HEALTHY", timeout=60), model_status()
    healthy_s = time.monotonic() - hung_at
    print(f"\nhung step: /healthz 503 after {healthz_s:.1f} s; in-flight stream ended with {stream_error} after "
          f"{stream_s:.1f} s, non-streaming got {plain_resp.status_code} after {plain_s:.1f} s; first 200 from a "
          f"new replica {replaced_s:.1f} s after the hang (pid {old_pid} -> {call(app, 'stats')['pid']}); "
          f"tries meanwhile: {statuses}; Serve said {sorted(serve_views)}; HEALTHY again {healthy_s:.1f} s after the "
          f"hang")
