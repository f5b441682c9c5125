"""HTTP-level tests of the app on a real local Ray with the tiny random-init GPT-2.

One Ray session (see conftest.ray_serve) and one deployed application for the module.
"""

import concurrent.futures as cf
import json
import time
from collections import Counter

import httpx
import pytest

from serve_app.app import GPT2Model, TextGenAPI, build_app
from serve_app.config import AppArgs
from tests.support import poll_until

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

LIMIT = 64
BATCH = 4
QUEUE = 2


@pytest.fixture(scope="module")
def app(ray_serve, tiny_model_dir):
    from ray import serve

    args = AppArgs(model=str(tiny_model_dir), max_batch_size=BATCH, max_queued_requests=QUEUE,
                   max_tokens_limit=LIMIT, default_max_tokens=16)
    serve.run(build_app(args), name="textgen", route_prefix="/")
    client = httpx.Client(base_url=ray_serve["url"], timeout=120)
    yield {**ray_serve, "client": client, "args": args}
    client.close()
    serve.delete("textgen")


def complete(app, **body):
    return app["client"].post("/v1/completions", json=body)


def sse_events(resp):
    """Parse a server-sent event stream into its data payloads (JSON dicts, or the literal [DONE])."""
    out = []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_openai_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err


# ------------------------------------------------------------------ endpoints


def test_generate_curl_contract(app):
    r = app["client"].get("/generate?query=Hello%20friend%2C%20how")  # exactly the README's curl
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body, list) and len(body) == 1 and set(body[0]) == {"generated_text"}
    text = body[0]["generated_text"]
    assert text.startswith("Hello friend, how") and len(text) > len("Hello friend, how")


def test_healthz_and_models(app):
    r = app["client"].get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = app["client"].get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == "gpt2-tiny-random-init" and card["random_init"] is True
    assert "RANDOM" in card["description"] and card["object"] == "model"


def test_completion_shape_usage_and_greedy_determinism(app):
    r = complete(app, prompt="Hello world", max_tokens=12, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "gpt2-tiny-random-init" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["finish_reason"] in ("length", "stop") and choice["text"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == 2  # "Hello world" is [15496, 995]
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = complete(app, prompt=["Hello world"], max_tokens=12, temperature=0, model="gpt2-tiny-random-init")
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == choice["text"]


def test_seeded_sampling_is_reproducible(app):
    a = complete(app, prompt="Once upon", max_tokens=10, temperature=1.0, top_p=0.9, seed=7).json()
    b = complete(app, prompt="Once upon", max_tokens=10, temperature=1.0, top_p=0.9, seed=7).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stop_sequence_cuts_the_text(app):
    full = complete(app, prompt="The", max_tokens=30, temperature=0).json()["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:6]
    r = complete(app, prompt="The", max_tokens=30, temperature=0, stop=[stop]).json()
    cut = full.index(stop)
    assert r["choices"][0]["text"] == full[:cut]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_streaming_sse_matches_non_streaming(app):
    expected = complete(app, prompt="Streaming test", max_tokens=10, temperature=0).json()
    with app["client"].stream("POST", "/v1/completions",
                              json={"prompt": "Streaming test", "max_tokens": 10, "temperature": 0,
                                    "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        r.read()
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2 and all(c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected["choices"][0]["text"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == expected["usage"]


def test_generate_accepts_sampling_knobs(app):
    r = app["client"].get("/generate", params={"query": "Hi", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()[0]["generated_text"].startswith("Hi")


# ------------------------------------------------------------------ bad input: clear 4xx, never 500


@pytest.mark.parametrize("url,param", [
    ("/generate", "query"),
    ("/generate?query=", "query"),
    ("/generate?query=%20%20", "query"),
    ("/generate?query=%FF%FE", None),
    ("/generate?query=abc%C3", None),
    ("/generate?query=hi&max_tokens=0", "max_tokens"),
    (f"/generate?query=hi&max_tokens={LIMIT + 1}", "max_tokens"),
    ("/generate?query=hi&temperature=9", "temperature"),
])
def test_generate_bad_input(app, url, param):
    assert_openai_error(app["client"].get(url), 400, param)


def test_generate_raw_non_utf8_query_bytes(app):
    # Raw (not percent-encoded) bytes on the wire, as a broken client would send them.
    import socket

    host, port = "127.0.0.1", app["port"]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"GET /generate?query=caf\xe9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    assert status == 400, data[:300]
    # Serve's HTTP server (uvicorn) rejects such a request line itself, before the app: still a 400,
    # plain text. Percent-encoded bad bytes reach the app and get its JSON error (tests above).


@pytest.mark.parametrize("content,param", [
    (b"{not json", None),
    (b"\xff\xfe\x00", None),
    (b'{"prompt": "caf\xe9"}', None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"max_tokens": 5}', "prompt"),
    (b'{"prompt": ""}', "prompt"),
    (b'{"prompt": ["a", "b"]}', "prompt"),
    (b'{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": -3}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 65}', "max_tokens"),
    (b'{"prompt": "x", "max_tokens": "lots"}', "max_tokens"),
    (b'{"prompt": "x", "temperature": -1}', "temperature"),
    (b'{"prompt": "x", "temperature": 2.5}', "temperature"),
    (b'{"prompt": "x", "top_p": 0}', "top_p"),
    (b'{"prompt": "x", "top_p": 1.5}', "top_p"),
])
def test_completions_bad_input(app, content, param):
    r = app["client"].post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, param)


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context(app, stream):
    prompt = " hello" * 1020  # 1020 tokens + 16 default new tokens > 1024
    r = complete(app, prompt=prompt, stream=stream)
    assert_openai_error(r, 400, "prompt")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = complete(app, prompt=" hello" * 1000, max_tokens=LIMIT)  # 1000 + 64 > 1024 as well
    assert_openai_error(r, 400, "prompt")
    long_query = "/generate?query=" + "%20hello" * 1020
    assert_openai_error(app["client"].get(long_query), 400, "query")


def test_huge_inputs(app):
    r = complete(app, prompt="x" * 200_000)  # cannot fit whatever its tokens: rejected before tokenizing
    assert_openai_error(r, 400, "prompt")
    r = app["client"].post("/v1/completions", content=b'{"prompt": "' + b"x" * (3 << 20) + b'"}')
    assert_openai_error(r, 413)


def test_unknown_model_is_404(app):
    r = complete(app, prompt="x", model="gpt2")
    assert_openai_error(r, 404, "model")
    assert "gpt2-tiny-random-init" in r.json()["error"]["message"]


def test_replica_survives_bad_input(app):
    before = app["client"].get("/stats").json()
    for _ in range(3):
        app["client"].post("/v1/completions", content=b"\xff")
        complete(app, prompt=" x" * 2000)
    r = complete(app, prompt="still alive", max_tokens=2)
    assert r.status_code == 200
    after = app["client"].get("/stats").json()
    assert after["pid"] == before["pid"]  # same replica process, not a restarted one


# ------------------------------------------------------------------ batching, cancellation, metrics


def _hist(stats):
    return {int(k): v for k, v in stats["batch_size_hist"].items()}


def test_concurrent_requests_share_a_batch(app):
    before = _hist(app["client"].get("/stats").json())
    n = BATCH

    def one(i):
        # A burst can briefly exceed the tiny admission queue of this test app (QUEUE): a well-behaved
        # client honours Retry-After, as this one does (bounded).
        for _ in range(10):
            r = httpx.post(f"{app['url']}/v1/completions", timeout=120,
                           json={"prompt": f"Request {i}", "max_tokens": LIMIT, "temperature": 0})
            if r.status_code != 503:
                return r.status_code
            time.sleep(min(float(r.headers.get("retry-after", 1)), 2) * 0.2)
        return r.status_code

    with cf.ThreadPoolExecutor(n) as ex:
        codes = list(ex.map(one, range(n)))
    assert codes == [200] * n
    after = _hist(app["client"].get("/stats").json())
    shared = {bs: after.get(bs, 0) - before.get(bs, 0) for bs in after if bs > 1}
    assert sum(shared.values()) > 0, f"no decode step ran more than one request: {after}"
    assert max(bs for bs, d in shared.items() if d > 0) <= BATCH


def test_client_disconnect_cancels_generation(app):
    before = app["client"].get("/stats").json()["requests_cancelled"]
    with httpx.Client(base_url=app["url"], timeout=60) as c:
        with c.stream("POST", "/v1/completions",
                      json={"prompt": "cancel me", "max_tokens": LIMIT, "stream": True}) as r:
            assert r.status_code == 200
            next(r.iter_bytes())  # first chunk, then hang up
    cancelled = poll_until(lambda: app["client"].get("/stats").json()["requests_cancelled"] > before, 30)
    assert cancelled, "the engine never saw the cancellation"


def test_prometheus_metrics_exported(app):
    complete(app, prompt="metrics", max_tokens=4)

    def scrape():
        try:
            text = httpx.get(app["metrics_url"], timeout=10).text
        except httpx.HTTPError:
            return None
        names = {"ray_textgen_generated_tokens_total", "ray_textgen_batch_size_bucket",
                 "ray_serve_num_http_requests_total"}
        return text if all(f"\n{n}{{" in text for n in names) else None

    text = poll_until(scrape, timeout=60, interval=2)
    assert text, "custom textgen metrics never showed up on the metrics export port"
    tokens = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("ray_textgen_generated_tokens_total{") and 'model="gpt2-tiny-random-init"' in line]
    assert tokens and sum(tokens) > 0


# ------------------------------------------------------------------ overload: 503 + Retry-After, then recovery


def test_overload_gets_503_with_retry_after_and_recovers(app):
    flood = 8 * (2 * BATCH + QUEUE)  # far beyond what the replica holds plus the bounded queue

    def one(i):
        try:
            r = httpx.post(f"{app['url']}/v1/completions", timeout=120,
                           json={"prompt": f"flood {i}", "max_tokens": LIMIT, "temperature": 0})
            return r.status_code, r.headers.get("retry-after")
        except httpx.HTTPError as exc:  # a dropped connection would count as a failure below
            return type(exc).__name__, None

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(flood) as ex:
        results = list(ex.map(one, range(flood)))
    counts = Counter(code for code, _ in results)
    assert set(counts) <= {200, 503}, counts  # no 500s, no dropped connections
    assert counts[503] > 0 and counts[200] > 0, counts
    assert all(ra is not None and int(ra) >= 1 for code, ra in results if code == 503)
    assert time.monotonic() - t0 < 300
    r = complete(app, prompt="after the flood", max_tokens=3)
    assert r.status_code == 200, r.text
    assert app["client"].get("/healthz").status_code == 200


# ------------------------------------------------------------------ health before the model is loaded


def test_healthz_is_503_until_the_model_is_up(app):
    """An app whose model replica can never be scheduled: the ingress is up, /healthz says 503."""
    from ray import serve
    from ray.serve.api import _run

    raw = app["args"].model_dump()
    model = GPT2Model.options(ray_actor_options={"num_cpus": 0, "resources": {"never-available": 1}}).bind(raw)
    _run(TextGenAPI.options(name="TextGenAPI").bind(model, raw), _blocking=False,
         name="pending", route_prefix="/pending")
    try:
        def ingress_up():
            r = app["client"].get("/pending/healthz", timeout=30)
            return r if r.status_code != 404 else None

        r = poll_until(ingress_up, timeout=120, interval=1)
        assert r is not None and r.status_code == 503, r and r.text
        assert r.json()["status"] == "unavailable"
        r = app["client"].post("/pending/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.headers.get("retry-after")
        # The main app is unaffected.
        assert app["client"].get("/healthz").status_code == 200
    finally:
        serve.delete("pending", _blocking=False)
