"""The generated parts of the benchmark: README table drift, headline arithmetic, the plot."""

import copy
import json

import pytest

from bench import headline, report, run_bench


def test_readme_table_is_generated_from_committed_json():
    """bench/README.md's table is exactly what bench/report.py renders from bench/results/latest.json."""
    readme = report.README.read_text()
    assert report.BEGIN in readme and report.END in readme
    wanted = report.splice(readme, report.render_block(report.load_results(report.LATEST)))
    assert readme == wanted, "bench/README.md is stale: run `make bench-report`"


def _point(c, tps, p50, *, stream=True, errors=0, tokens=50):
    return {
        "concurrency": c, "requests": 2 * c, "ok": 2 * c - errors, "errors": errors, "error_samples": [],
        "wall_s": 10.0, "requests_per_s": tps / tokens, "tokens_per_s": tps, "generated_tokens": int(tps * 10),
        "tokens_per_request": {"min": tokens, "mean": float(tokens), "max": tokens, "requested": 50},
        "latency_s": {"p50": p50, "p95": p50 * 1.2, "mean": p50, "max": p50 * 1.3},
        "stream": {"errors": 0, "ttft_s": {"p50": 0.05, "p95": 0.08}} if stream else None,
        "memory": {"tree_pss_mib": 1000.0, "replica_rss_mib_max": 1100.0, "replicas": 1},
    }


def synthetic_results():
    systems = {
        "baseline": {"label": "baseline", "replicas": 1,
                     "points": [_point(1, 20.0, 2.5, stream=False), _point(32, 21.0, 76.0, stream=False)]},
        "peer": {"label": "peer", "replicas": 1, "points": [_point(1, 25.0, 2.0), _point(32, 200.0, 8.0)]},
        "vllm": {"label": "vLLM CPU", "replicas": 1, "dtype": "float32",
                 "points": [_point(1, 26.0, 1.9), _point(8, 100.0, 4.0), _point(32, 250.0, 6.4)]},
        "textgen-1": {"label": "ours 1", "replicas": 1, "points": [_point(1, 24.0, 2.2), _point(32, 300.0, 5.0)]},
        "textgen-2": {"label": "ours 2", "replicas": 2, "dtype": "float32",
                      "points": [_point(1, 22.0, 2.6), _point(8, 120.0, 3.3), _point(32, 320.0, 4.8)]},
    }
    res = {
        "generated_at": "2026-01-01T00:00:00+00:00", "model": "gpt2-random-init", "new_tokens": 50,
        "cpu_count": 2, "concurrency": 32, "concurrency_sweep": [1, 8, 32],
        "requests_per_point": {"1": 8, "8": 16, "32": 64},
        "machine": {"cpu_model": "test CPU", "note": "shared", "cpu_flags": ["avx2", "avx512f", "fma"],
                    "native_bf16": False, "amx": False},
        "engine_offline": {"sequences": 32, "new_tokens": 50, "ours": 300.0, "openvino": 280.0,
                           "ours_int8": 320.0, "openvino_int8": 250.0,
                           "batch1_latency_s": {"ours": 1.9, "openvino": 1.8, "ours_int8": 1.2, "openvino_int8": 1.1},
                           "dtype": {"ours": "float32", "openvino": "float32"},
                           "greedy_vs_transformers_fp32": {"ours": {"compared": 4, "identical": 4}}},
        "systems": systems,
    }
    res.update(run_bench.headline(res))
    return res


def test_headline_picks_best_textgen_and_computes_ratios():
    res = synthetic_results()
    assert res["textgen"]["system"] == "textgen-2"
    assert res["ratio"] == round(320.0 / 21.0, 2)
    assert res["peer_ratio"] == 1.6
    assert res["vllm_ratio"] == 1.28
    assert res["vllm_ratio_mid_concurrency"] == {"concurrency": 8, "ratio": 1.2}
    # One block per system at the top concurrency, each with tokens/s, errors and dtype.
    for key, tps in (("baseline", 21.0), ("peer", 200.0), ("vllm", 250.0), ("textgen", 320.0)):
        assert res[key]["tokens_per_s"] == tps and res[key]["errors"] == 0 and res[key]["dtype"] == "float32"
    # The low-concurrency latency is the chosen configuration's own, not the best of the two.
    low = res["p50_latency_low_concurrency"]
    assert low["textgen_s"] == 2.6 and low["fastest_peer"] == "vllm" and low["fastest_peer_s"] == 1.9
    g = res["goals"]
    assert g["tokens_per_s_20x_baseline"] is False  # 15.2x
    assert g["tokens_per_s_2x_peer"] is False  # 1.6x
    assert g["tokens_per_s_1_25x_vllm"] is True  # 1.28x
    assert g["tokens_per_s_mid_concurrency_at_least_vllm"] is True  # 120 vs 100
    assert g["p50_low_concurrency_at_most_fastest_peer"] is False  # 2.6 s vs 1.9 s
    assert g["engine_offline_at_least_openvino_fp32"] is True  # 300 vs 280
    assert g["batch1_int8_at_most_openvino_int8"] is False  # 1.2 s vs 1.1 s
    assert g["no_errors"]


def test_headline_goals_use_unrounded_ratios_and_say_when_not_measured():
    res = synthetic_results()
    res["systems"]["vllm"]["points"][2]["tokens_per_s"] = 320.0 / 1.2499  # rounds to 1.25, is below it
    del res["engine_offline"]
    h = headline.headline(res)
    assert h["vllm_ratio"] == 1.25 and h["goals"]["tokens_per_s_1_25x_vllm"] is False
    assert h["goals"]["engine_offline_at_least_openvino_fp32"] is None
    del res["systems"]["vllm"]
    h = headline.headline(res)
    assert h["vllm"] is None and h["vllm_ratio"] is None and h["vllm_ratio_mid_concurrency"]["ratio"] is None
    assert h["goals"]["tokens_per_s_1_25x_vllm"] is None
    assert h["p50_latency_low_concurrency"]["fastest_peer"] == "peer"


def test_headline_counts_errors_and_failures():
    res = synthetic_results()
    res["systems"]["peer"]["points"][1]["stream"]["errors"] = 3
    res["systems"]["textgen-2"]["points"][0]["errors"] = 1
    res["systems"]["broken"] = {"label": "broken", "failed": "ServerError: boom", "points": []}
    h = run_bench.headline(res)
    assert h["errors_total"] == 4
    assert h["peer"]["errors"] == 3 and h["textgen"]["errors"] == 1 and h["vllm"]["errors"] == 0
    res["engine_offline"]["errors"] = {"int8": "exit 1: boom"}
    assert run_bench.headline(res)["failed_systems"] == ["broken", "engine_offline"]
    assert h["failed_systems"] == ["broken"]
    assert h["goals"]["no_errors"] is False


def test_render_block_has_a_row_per_point_and_the_goals():
    res = synthetic_results()
    block = report.render_block(res)
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and " | 32 | " in ln]
    assert len(rows) == 5
    assert "15.24× the baseline" in block and "1.60× transformers serve" in block and "1.28× vLLM CPU" in block
    assert "Projection (not a measurement)" in block
    cap = report.capacity_model(res)
    assert cap["tokens_per_s_per_vcpu"] == 160.0
    assert cap["projected_tokens_per_s"] == 160.0 * 128
    assert report.render_block(res) == block  # deterministic


def test_render_block_leads_with_one_row_per_system_then_the_engines_alone():
    res = synthetic_results()
    block = report.render_block(res)
    assert "CPU flags: avx512f; native bf16: no, AMX: no" in block
    head = block.index("| system | dtype | c=1 tok/s (p50 s) | c=8 tok/s (p50 s) | c=32 tok/s (p50 s) |")
    assert head < block.index("| system | conc. |")  # the headline table comes before the per-point one
    assert "| vLLM CPU (OpenAI server) | float32 | 26.0 (1.90) | 100.0 (4.00) | 250.0 (6.40) | 0 | 1.28× |" in block
    assert "| baseline (FastAPI + pipeline) | float32 | 20.0 (2.50) | – (–) | 21.0 (76.0) | 0 | 15.24× |" in block
    assert "| OpenVINO GenAI ContinuousBatchingPipeline | float32 | 280.0 | 1.80 | – |" in block
    assert "| ours (GenerationEngine) | float32 | 300.0 | 1.90 | 4/4 prompts |" in block
    del res["systems"]["vllm"], res["engine_offline"]
    res.update(run_bench.headline(res))
    block = report.render_block(res)
    assert "| vLLM CPU (OpenAI server) | – | not run | not run | not run | – | – |" in block
    assert "Engines alone (ours vs OpenVINO GenAI): not run." in block
    assert block.count("not measured") == 4  # vs vLLM at c=32 and c=8, vs OpenVINO fp32 and int8


def test_render_block_marks_unmet_goals():
    res = synthetic_results()
    slow = copy.deepcopy(res)
    slow["systems"]["textgen-2"]["points"][2]["tokens_per_s"] = 100.0
    slow["systems"]["textgen-1"]["points"][1]["tokens_per_s"] = 90.0
    slow.update(run_bench.headline(slow))
    block = report.render_block(slow)
    assert slow["goals"]["tokens_per_s_1_25x_vllm"] is False
    # 20x baseline, 2x peer, 1.25x vLLM, the c=1 latency vs vLLM's, int8 batch-1 (c=8 and engine fp32 hold)
    assert block.count("**not met**") == 5


def test_splice_replaces_only_between_markers():
    text = f"intro\n\n{report.BEGIN}\nold table\n{report.END}\noutro\n"
    out = report.splice(text, "\nnew\n")
    assert out == f"intro\n\n{report.BEGIN}\n\nnew\n{report.END}\noutro\n"
    assert report.splice(out, "\nnew\n") == out
    appended = report.splice("no markers\n", "\nx\n")
    assert appended.endswith(f"{report.BEGIN}\n\nx\n{report.END}\n")


def test_report_check_detects_drift(tmp_path):
    res = synthetic_results()
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.BEGIN}\nstale\n{report.END}\n")
    args = ["--results", str(results), "--readme", str(readme), "--plot", str(tmp_path / "p.png")]
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0
    assert report.main(args + ["--check"]) == 0
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("c,expected", [(1, 8), (8, 16), (32, 64)])
def test_requests_per_point(c, expected):
    assert run_bench.requests_for(c) == expected
