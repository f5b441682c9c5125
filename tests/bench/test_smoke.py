"""A quick run of the benchmark's real flow on the tiny model: start each server, load it, stop it.

Real servers on 127.0.0.1 free ports, a handful of requests each; the full benchmark (`make bench`)
is never part of the test suite.
"""

from pathlib import Path

import psutil
import pytest

from bench import loadgen, run_bench
from bench.servers import Server, baseline_spec, peer_spec, textgen_spec

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".models"
TINY = MODELS / "gpt2-tiny-random-init"
NEW_TOKENS = 6



def sweep(spec, model_dir, tmp_path):
    return run_bench.run_system(
        spec, model_dir=model_dir, concurrencies=[1, 3], new_tokens=NEW_TOKENS,
        prompts=run_bench.loadgen.load_prompts(), min_requests=3, per_slot=1, timeout_s=120.0,
        log_dir=tmp_path,
    )


def check_points(result, *, stream):
    assert "failed" not in result, result.get("failed")
    assert [p["concurrency"] for p in result["points"]] == [1, 3]
    for p in result["points"]:
        assert p["errors"] == 0, p["error_samples"]
        assert p["ok"] == p["requests"] == 3
        assert p["tokens_per_request"]["min"] >= 1
        assert p["tokens_per_request"]["max"] <= NEW_TOKENS
        assert p["tokens_per_s"] > 0 and p["latency_s"]["p50"] > 0
        assert p["memory"]["tree_pss_mib"] > 50
        if stream:
            assert p["stream"]["errors"] == 0, p["stream"]["error_samples"]
            assert p["stream"]["ttft_s"]["p50"] is not None
            assert p["stream"]["ttft_s"]["p50"] <= p["stream"]["latency_s"]["max"]
        else:
            assert p["stream"] is None


def assert_all_gone(pids):
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {alive}"


@pytest.mark.timeout(300)
def test_baseline_smoke(tiny_model_dir, tmp_path):
    result = sweep(baseline_spec(str(tiny_model_dir), NEW_TOKENS), tiny_model_dir, tmp_path)
    check_points(result, stream=False)
    # The baseline is forced to exactly NEW_TOKENS new tokens per answer.
    assert all(p["tokens_per_request"]["min"] == NEW_TOKENS for p in result["points"])
    assert (tmp_path / "baseline.log").is_file()


@pytest.mark.timeout(300)
def test_peer_smoke(tiny_model_dir, tmp_path):
    spec = peer_spec(str(tiny_model_dir), extra_args=run_bench.DEFAULT_PEER_ARGS.split())
    result = sweep(spec, tiny_model_dir, tmp_path)
    check_points(result, stream=True)
    # The KV cache is bounded by the flags, not by 90% of the machine's memory.
    assert max(p["memory"]["tree_rss_mib"] for p in result["points"]) < 4096


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_textgen_smoke_two_replicas(tiny_model_dir, tmp_path):
    """Ours at 2 replicas on a private Ray: deploys, answers plain and streaming load, stops cleanly."""
    spec = textgen_spec(str(tiny_model_dir), replicas=2, cpus=2)
    server = Server(spec, log_path=tmp_path / "textgen.log")
    server.start()
    try:
        assert server.ready_info["deployments"]["GPT2Model"]["replicas"] == {"RUNNING": 2}
        tree = [p.pid for p in server._tree()]
        assert len(tree) > 3  # the launcher, Ray's GCS and raylet, workers
        common = dict(concurrency=4, requests=8, warmup=2, tokenizer_dir=str(tiny_model_dir), timeout_s=120.0)
        plain = loadgen.run_point(loadgen.Target(spec.base_url, spec.kind, NEW_TOKENS), **common)
        streamed = loadgen.run_point(loadgen.Target(spec.base_url, spec.kind, NEW_TOKENS, stream=True), **common)
        mem = server.memory()
    finally:
        server.stop()
    for point in (plain, streamed):
        assert point["errors"] == 0, point["error_samples"]
        assert point["ok"] == 8 and point["tokens_source"] == ["usage"]
        assert 1 <= point["tokens_per_request"]["min"] <= point["tokens_per_request"]["max"] <= NEW_TOKENS
    assert streamed["ttft_s"]["p50"] is not None and streamed["ttft_s"]["p50"] <= streamed["latency_s"]["max"]
    assert len(mem["replica_rss_mib"]) == 2 and all(r > 50 for r in mem["replica_rss_mib"])
    assert_all_gone(tree)
    assert not Path(server.ready_info["temp_dir"]).exists()
    assert "Submitted deploy config successfully" in server.log_path.read_text()  # started by serve_app.run_local
