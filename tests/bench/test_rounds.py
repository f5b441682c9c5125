"""Several benchmark rounds merged into one result per system (bench/rounds.py), and what the headline, the report
and run_bench's command line make of them."""

import pytest

from bench import headline, report, rounds, run_bench
from tests.bench.test_report import _point, synthetic_results


def test_median_round_is_the_middle_one_and_the_lower_middle_for_an_even_count():
    assert rounds.median_round([300.0, 250.0, 350.0]) == 0
    assert rounds.median_round([350.0, 250.0]) == 1  # the lower of two: the conservative pick
    assert rounds.median_round([1.0, 4.0, 3.0, 2.0]) == 3  # sorted 1, 2, 3, 4: the lower middle one is 2
    assert rounds.median_round([5.0]) == 0


def _round(tps_1, tps_32, p50_32, *, errors_32=0, stream_errors_32=0):
    top = _point(32, tps_32, p50_32, errors=errors_32)
    top["stream"]["errors"] = stream_errors_32
    return {"label": "ours", "replicas": 1, "points": [_point(1, tps_1, 1.5), top]}


def test_one_round_is_left_as_it_is():
    only = _round(30.0, 300.0, 5.0)
    assert rounds.merge_rounds([only]) is only


def test_each_concurrency_reports_its_median_round_whole_and_every_rounds_figures():
    runs = [_round(30.0, 340.0, 4.0), _round(33.0, 290.0, 6.0, errors_32=1), _round(31.0, 310.0, 5.0,
                                                                                     stream_errors_32=2)]
    merged = rounds.merge_rounds(runs)
    assert merged["rounds"] == 3 and merged["label"] == "ours" and "failed" not in merged
    low, top = merged["points"]
    assert low["tokens_per_s"] == 31.0 and low["rounds_tokens_per_s"] == [30.0, 33.0, 31.0]
    # The median round's point whole: its latency belongs to the run of its throughput.
    assert top["tokens_per_s"] == 310.0 and top["latency_s"]["p50"] == 5.0
    assert top["rounds_tokens_per_s"] == [340.0, 290.0, 310.0] and top["rounds_errors"] == [0, 1, 2]
    assert runs[2]["points"][1].get("rounds_errors") is None  # the inputs are not changed


def test_errors_count_over_every_round_in_the_headline():
    res = synthetic_results()
    top = res["systems"]["textgen-2"]["points"]
    clean, flaky = [dict(p) for p in top], [dict(p) for p in top]
    flaky[2] = {**flaky[2], "errors": 2, "tokens_per_s": 500.0}  # the fastest round had errors: not the median
    res["systems"]["textgen-2"] = rounds.merge_rounds([
        {"label": "ours 2", "replicas": 2, "points": clean},
        {"label": "ours 2", "replicas": 2, "points": flaky},
        {"label": "ours 2", "replicas": 2, "points": [dict(p) for p in top]},
    ])
    h = headline.headline(res)
    assert h["textgen"]["tokens_per_s"] == 320.0 and h["textgen"]["rounds_tokens_per_s"] == [320.0, 500.0, 320.0]
    assert h["textgen"]["errors"] == 2 and h["errors_total"] == 2 and h["goals"]["no_errors"] is False
    assert h["vllm"]["rounds_tokens_per_s"] == [250.0]  # a single run is its own only round


def test_a_round_that_failed_fails_the_system():
    merged = rounds.merge_rounds([_round(30.0, 300.0, 5.0), {"label": "ours", "failed": "ServerError: boom",
                                                            "points": []}])
    assert merged["failed"] == "ServerError: boom"
    assert [p["rounds_tokens_per_s"] for p in merged["points"]] == [[30.0], [300.0]]


def test_report_says_how_the_rounds_varied_only_when_there_were_several():
    res = synthetic_results()
    assert "rounds" not in report.render_headline(res)
    res["rounds"] = 3
    res["textgen"]["rounds_tokens_per_s"] = [320.0, 301.5, 333.0]
    text = report.render_headline(res)
    assert "3 rounds, the systems taking turns" in text and "ours (Ray Serve) 320.0 / 301.5 / 333.0" in text


def test_run_bench_refuses_zero_rounds():
    with pytest.raises(SystemExit):
        run_bench.main(["--rounds", "0"])
