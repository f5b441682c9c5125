"""The load generator's pure parts: prompts, percentiles, per-point aggregation."""

import pytest

from bench import loadgen


def test_prompts_file_is_varied_and_clean():
    prompts = loadgen.load_prompts()
    assert len(prompts) >= 16
    assert len(set(prompts)) == len(prompts)
    assert all(p == p.strip() and not p.startswith("#") for p in prompts)


def test_percentile_interpolates():
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([3.0], 95) == 3.0
    assert loadgen.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert loadgen.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert loadgen.percentile(list(range(101)), 95) == pytest.approx(95.0)


def test_summarize_counts_only_successful_requests():
    t = loadgen.Target("http://127.0.0.1:1", "completions", new_tokens=50, stream=True)
    results = [
        loadgen.RequestResult(0, True, 1.0, ttft_s=0.1, tokens=50, tokens_source="usage", status=200),
        loadgen.RequestResult(1, True, 3.0, ttft_s=0.3, tokens=48, tokens_source="usage", status=200),
        loadgen.RequestResult(2, False, 9.0, status=503, error="HTTP 503: overloaded"),
    ]
    s = loadgen.summarize(results, wall_s=4.0, concurrency=2, t=t)
    assert s["requests"] == 3 and s["ok"] == 2 and s["errors"] == 1
    assert s["error_samples"] == ["HTTP 503: overloaded"]
    assert s["tokens_per_s"] == 24.5  # (50 + 48) / 4 s
    assert s["requests_per_s"] == 0.5
    assert s["latency_s"]["p50"] == 2.0  # the failed request's 9 s is not a latency
    assert s["ttft_s"]["p50"] == pytest.approx(0.2)
    assert s["tokens_per_request"] == {"min": 48, "mean": 49.0, "max": 50, "requested": 50}


def test_target_rejects_streaming_the_baseline():
    with pytest.raises(ValueError):
        loadgen.Target("http://127.0.0.1:1", "generate", stream=True)
    with pytest.raises(ValueError):
        loadgen.Target("http://127.0.0.1:1", "chat")


def test_unreachable_server_is_an_error_not_a_crash():
    """Connection refused on every request: counted as errors, the point still completes."""
    from serve_app.run_local import free_port

    t = loadgen.Target(f"http://127.0.0.1:{free_port()}", "completions", new_tokens=4)
    s = loadgen.run_point(t, concurrency=2, requests=3, warmup=1, timeout_s=5.0)
    assert s["requests"] == 3 and s["errors"] == 3 and s["ok"] == 0
    assert s["warmup"] == {"requests": 1, "errors": 1}
    assert any("Connect" in e for e in s["error_samples"])
