"""The generated parts of the benchmark: README table drift, headline arithmetic, the plot."""

import copy
import json

import pytest

from bench import report, run_bench


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
        "textgen-1": {"label": "ours 1", "replicas": 1, "points": [_point(1, 24.0, 2.2), _point(32, 300.0, 5.0)]},
        "textgen-2": {"label": "ours 2", "replicas": 2, "points": [_point(1, 22.0, 2.6), _point(32, 320.0, 4.8)]},
    }
    res = {
        "generated_at": "2026-01-01T00:00:00+00:00", "model": "gpt2-random-init", "new_tokens": 50,
        "cpu_count": 2, "concurrency": 32, "concurrency_sweep": [1, 32],
        "requests_per_point": {"1": 8, "32": 64}, "machine": {"cpu_model": "test CPU", "note": "shared"},
        "systems": systems,
    }
    res.update(run_bench.headline(res))
    return res


def test_headline_picks_best_textgen_and_computes_ratios():
    res = synthetic_results()
    assert res["textgen"]["system"] == "textgen-2"
    assert res["ratio"] == round(320.0 / 21.0, 2)
    assert res["peer_ratio"] == 1.6
    # The low-concurrency latency is the chosen configuration's own, not the best of the two.
    assert res["p50_latency_low_concurrency"]["textgen_s"] == 2.6
    assert res["goals"]["tokens_per_s_10x_baseline"] and res["goals"]["tokens_per_s_1_5x_peer"]
    assert res["goals"]["p50_low_concurrency_within_1_1x_baseline"]  # 2.6 / 2.5 = 1.04
    assert res["goals"]["no_errors"]


def test_headline_counts_errors_and_failures():
    res = synthetic_results()
    res["systems"]["peer"]["points"][1]["stream"]["errors"] = 3
    res["systems"]["textgen-2"]["points"][0]["errors"] = 1
    res["systems"]["broken"] = {"label": "broken", "failed": "ServerError: boom", "points": []}
    h = run_bench.headline(res)
    assert h["errors_total"] == 4
    assert h["failed_systems"] == ["broken"]
    assert h["goals"]["no_errors"] is False


def test_render_block_has_a_row_per_point_and_the_goals():
    res = synthetic_results()
    block = report.render_block(res)
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and " | 32 | " in ln]
    assert len(rows) == 4
    assert "15.24× the baseline" in block and "1.60× transformers serve" in block
    assert "Projection (not a measurement)" in block
    cap = report.capacity_model(res)
    assert cap["tokens_per_s_per_vcpu"] == 160.0
    assert cap["projected_tokens_per_s"] == 160.0 * 128
    assert report.render_block(res) == block  # deterministic


def test_render_block_marks_unmet_goals():
    res = synthetic_results()
    slow = copy.deepcopy(res)
    slow["systems"]["textgen-2"]["points"][1]["tokens_per_s"] = 100.0
    slow["systems"]["textgen-1"]["points"][1]["tokens_per_s"] = 90.0
    slow.update(run_bench.headline(slow))
    block = report.render_block(slow)
    assert slow["goals"]["tokens_per_s_10x_baseline"] is False
    assert block.count("**not met**") == 2


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
