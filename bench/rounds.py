"""Several rounds of the same sweep, merged into one result per system (pure; tested on synthetic data).

This machine's speed drifts by up to ±15 % within minutes (bench/ENGINE.md), more than many of the differences
the benchmark compares, and each system is measured at a different time. With ``--rounds N`` every system runs N
times, the systems taking turns (round 1: all of them, round 2: all of them, ...), so drift reaches every system
alike. Each concurrency then reports the point of the round whose tokens/s is the median (the lower middle one
for an even N: the more conservative), whole, so its latencies and memory belong to the same run as its
throughput. Every round's tokens/s and errors stay beside it, and errors count over all rounds.
"""

from __future__ import annotations

from typing import Any

from bench.headline import point_errors


def median_round(values: list[float]) -> int:
    """Index of the median value (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


def merge_rounds(results: list[dict]) -> dict[str, Any]:
    """One system's result dicts, one per round (``run_system``'s), as one: the first round's fields, its points
    replaced by each concurrency's median-round point plus ``rounds_tokens_per_s`` / ``rounds_errors``, and
    ``rounds`` (the round count). A round that failed to start fails the merged result; a concurrency missing
    from some round is merged from the rounds that have it."""
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    failed = [r["failed"] for r in results if r.get("failed")]
    if failed:
        merged["failed"] = failed[0]
    merged["rounds"] = len(results)
    by_concurrency: dict[int, list[dict]] = {}  # in the order the sweep first reached each concurrency
    for r in results:
        for p in r.get("points", []):
            by_concurrency.setdefault(p["concurrency"], []).append(p)
    points = []
    for at_c in by_concurrency.values():
        tps = [float(p["tokens_per_s"]) for p in at_c]
        point = dict(at_c[median_round(tps)])
        point["rounds_tokens_per_s"] = tps
        point["rounds_errors"] = [point_errors(p) for p in at_c]
        points.append(point)
    merged["points"] = points
    return merged
