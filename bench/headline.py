"""The headline of bench/results/latest.json, computed from its per-point results (pure; tested on synthetic data).

One block per system at the top concurrency (``baseline``, ``peer`` = transformers serve, ``vllm``, ``textgen`` =
ours, the replica count with the higher tokens/s there), each with ``tokens_per_s``, ``errors`` (the system's
whole sweep, streaming pass included, every round), ``dtype`` and ``rounds_tokens_per_s`` (bench/rounds.py); the
ratios; and the goals of issue 17, each True, False, or None when what it compares was not measured (a peer
switched off, a concurrency not in the sweep).
"""

from __future__ import annotations

from typing import Optional

PEERS = ("peer", "vllm")  # the systems a user would pick instead of ours (the baseline is the seed app)
MID_CONCURRENCY = 8


def point_at(system: Optional[dict], concurrency: int) -> Optional[dict]:
    for p in (system or {}).get("points", []):
        if p["concurrency"] == concurrency:
            return p
    return None


def point_errors(point: dict) -> int:
    """The point's errors, streaming pass included; over every round when the point merges rounds."""
    if "rounds_errors" in point:
        return sum(point["rounds_errors"])
    return point["errors"] + ((point.get("stream") or {}).get("errors") or 0)


def system_errors(system: dict) -> int:
    return sum(point_errors(p) for p in system.get("points", []))


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a is not None and b else None


def _at_least(value: Optional[float], bound: float) -> Optional[bool]:
    return None if value is None else value >= bound


def headline(results: dict) -> dict:
    systems = results["systems"]
    sweep = results["concurrency_sweep"]
    top, low = max(sweep), min(sweep)

    def tps(name: Optional[str], c: int = top) -> Optional[float]:
        p = point_at(systems.get(name) if name else None, c)
        return p["tokens_per_s"] if p else None

    def p50(name: Optional[str], c: int = low) -> Optional[float]:
        p = point_at(systems.get(name) if name else None, c)
        return p["latency_s"]["p50"] if p else None

    ours = [n for n in systems if n.startswith("textgen-") and point_at(systems[n], top)]
    best = max(ours, key=lambda n: tps(n) or 0.0) if ours else None

    def summary(name: Optional[str]) -> Optional[dict]:
        if not name or not point_at(systems.get(name), top):
            return None
        s = systems[name]
        return {
            "system": name,
            "label": s["label"],
            "replicas": s.get("replicas", 1),
            "dtype": s.get("dtype", "float32"),
            "tokens_per_s": tps(name),
            "rounds_tokens_per_s": point_at(s, top).get("rounds_tokens_per_s", [tps(name)]),
            "errors": system_errors(s),
            "tokens_per_s_by_concurrency": {str(c): tps(name, c) for c in sweep},
            "p50_latency_s_by_concurrency": {str(c): p50(name, c) for c in sweep},
        }

    peer_p50s = {n: p50(n) for n in PEERS if p50(n) is not None}
    fastest_peer = min(peer_p50s, key=peer_p50s.get) if peer_p50s else None
    errors = sum(system_errors(s) for s in systems.values())
    failed = sorted(n for n, s in systems.items() if s.get("failed"))
    eo = results.get("engine_offline") or {}
    if eo.get("error") or eo.get("errors"):  # an engine of the engines-alone stage did not run
        failed.append("engine_offline")
    out = {
        "baseline": summary("baseline"),
        "peer": summary("peer"),
        "vllm": summary("vllm"),
        "textgen": summary(best),
        "ratio": ratio(tps(best), tps("baseline")) if best else None,
        "peer_ratio": ratio(tps(best), tps("peer")) if best else None,
        "vllm_ratio": ratio(tps(best), tps("vllm")) if best else None,
        "vllm_ratio_mid_concurrency": (
            {"concurrency": MID_CONCURRENCY, "ratio": ratio(tps(best, MID_CONCURRENCY), tps("vllm", MID_CONCURRENCY))}
            if best and MID_CONCURRENCY in sweep else None),
        "p50_latency_low_concurrency": {
            "concurrency": low,
            "baseline_s": p50("baseline"),
            "textgen_s": p50(best) if best else None,
            "ratio": ratio(p50(best), p50("baseline")) if best else None,
            "fastest_peer": fastest_peer,
            "fastest_peer_s": peer_p50s.get(fastest_peer),
            "ratio_fastest_peer": ratio(p50(best), peer_p50s.get(fastest_peer)) if best else None,
        },
        "errors_total": errors,
        "failed_systems": failed,
    }
    out["goals"] = goals(out, results.get("engine_offline"))
    return out


def goals(h: dict, engine_offline: Optional[dict]) -> dict:
    """Issue 17's goals: True / False, or None where one side was not measured (unrounded ratios)."""

    def raw(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    def tps(name: str, c: Optional[str] = None) -> Optional[float]:
        s = h.get(name) or {}
        return s.get("tokens_per_s") if c is None else (s.get("tokens_per_s_by_concurrency") or {}).get(c)

    low = h["p50_latency_low_concurrency"]
    mid = str(MID_CONCURRENCY)
    eo = engine_offline or {}
    vs_fastest = raw(low.get("textgen_s"), low.get("fastest_peer_s"))
    lat = eo.get("batch1_latency_s") or {}
    int8_vs_ov = raw(lat.get("ours_int8"), lat.get("openvino_int8"))
    return {
        "tokens_per_s_20x_baseline": _at_least(raw(tps("textgen"), tps("baseline")), 20.0),
        "tokens_per_s_2x_peer": _at_least(raw(tps("textgen"), tps("peer")), 2.0),
        "tokens_per_s_1_25x_vllm": _at_least(raw(tps("textgen"), tps("vllm")), 1.25),
        "tokens_per_s_mid_concurrency_at_least_vllm": _at_least(raw(tps("textgen", mid), tps("vllm", mid)), 1.0),
        "p50_low_concurrency_at_most_fastest_peer": None if vs_fastest is None else vs_fastest <= 1.0,
        "engine_offline_at_least_openvino_fp32": _at_least(raw(eo.get("ours"), eo.get("openvino")), 1.0),
        "batch1_int8_at_most_openvino_int8": None if int8_vs_ov is None else int8_vs_ov <= 1.0,
        "no_errors": h["errors_total"] == 0 and not h["failed_systems"],
    }
