"""The whole benchmark: baseline, transformers serve, vLLM CPU and ours, side by side here, then one JSON file.

    python -m bench.run_bench                      # the full sweep (what `make bench` runs)
    python -m bench.run_bench --smoke              # tiny model, few requests (`make bench-smoke`)

Systems, started one at a time (never two at once, so each has the machine to itself):

1. ``baseline``: FastAPI + uvicorn + a transformers pipeline (``bench/baseline_app.py``);
2. ``peer``: ``transformers serve --continuous-batching --device cpu <model dir>``;
3. ``vllm``: vLLM's CPU backend, its OpenAI server from its own venv (``bench/peer_vllm.py``; ``--no-vllm``);
4. ``textgen-<N>``: our serve app on Ray Serve with N model replicas, for N in ``--replicas``
   (default: 1 and the CPU count, "as many replicas as the cores allow").

With ``--rounds N`` (``make bench``: ``BENCH_ROUNDS``, default 3) the systems take turns N times and each point
reports its median round (``bench/rounds.py``), every round's tokens/s beside it.

Same weights, same prompts (``bench/prompts.txt``, in the same order), same number of new tokens
(greedy). For each system and each concurrency of the sweep: warm-up requests (not counted), then a
fixed number of non-streaming requests, closed loop (requests/s, generated tokens/s, p50/p95
latency, errors); for servers that stream, the same again with ``stream: true`` for the time to
first token. Memory (RSS/PSS of the server's process tree, RSS per model replica) is sampled while
the load runs.

The headline: generated tokens/s at the highest concurrency, ``ratio`` = ours / baseline and
``peer_ratio`` = ours / peer, where "ours" is the textgen configuration with the highest tokens/s
at that concurrency (all of its numbers are reported, not the best per column); ``bench/headline.py``.
Each OpenAI-style server first answers one greedy request that is compared with transformers' float32
greedy text (``bench/greedy_check.py``). Then, unless ``--no-engine-offline``, the engines alone
(``bench/engine_offline.py``: ours vs OpenVINO GenAI, 32 sequences at once) give ``engine_offline``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from bench import greedy_check, loadgen
from bench.headline import headline, point_at  # noqa: F401 - re-exported for callers and tests
from bench.machine import machine_info, versions
from bench.peer_vllm import DEFAULT_ARGS as DEFAULT_VLLM_ARGS
from bench.peer_vllm import venv_python, vllm_spec
from bench.rounds import merge_rounds
from bench.servers import Server, ServerSpec, baseline_spec, peer_spec, textgen_spec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_MODEL = ROOT / ".models" / "gpt2-random-init"
TINY_MODEL = ROOT / ".models" / "gpt2-tiny-random-init"
# Hugging Face's server sizes its paged KV cache from *total system memory* on CPU (90% of it by
# default: ~20 GiB here, which also makes it slower). Give it a fixed cache that fits the sweep
# (64 blocks of 256 tokens: 16k tokens, ~1.2 GiB for GPT-2 124M) and a batch-token budget that
# suits a CPU; bench/README.md has the measurements behind these values.
DEFAULT_PEER_ARGS = "--cb-num-blocks 64 --cb-max-batch-tokens 512"
# Every system computes in float32: our users' CPUs (m5: AVX-512, no bf16, no AMX) have no native bf16, where
# the serve config's `dtype: auto` means float32 too; on a CPU with bf16 it would pick bfloat16 for ours alone.
DEFAULT_TEXTGEN_ARGS = '{"dtype": "float32"}'


def requests_for(concurrency: int, minimum: int = 8, per_slot: int = 2) -> int:
    """Measured requests of one point: ``per_slot`` per concurrent slot, at least ``minimum``."""
    return max(minimum, per_slot * concurrency)


def warmup_for(concurrency: int, cap: int = 4) -> int:
    return max(1, min(concurrency, cap))


def model_name(model_dir: Path) -> str:
    """The honest name of the weights: the ``textgen.json`` marker of ``make model``, else the dir name."""
    marker = Path(model_dir) / "textgen.json"
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("served_model_name") or Path(model_dir).name
        except ValueError:
            pass
    return Path(model_dir).name


class MemorySampler:
    """Samples a server's memory every ``interval_s`` in a thread; keeps the peaks."""

    def __init__(self, server: Server, interval_s: float = 2.0):
        self.server, self.interval_s = server, interval_s
        self.peak: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        m = self.server.memory()
        for key in ("tree_rss_mib", "tree_pss_mib"):
            self.peak[key] = max(self.peak.get(key, 0.0), m[key])
        self.peak["processes"] = max(self.peak.get("processes", 0), m["processes"])
        reps = m["replica_rss_mib"]
        if reps:
            self.peak["replica_rss_mib_max"] = max(self.peak.get("replica_rss_mib_max", 0.0), max(reps))
            self.peak["replicas"] = len(reps)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._take()
            except Exception:  # noqa: BLE001 - a vanished process mid-sample is fine
                pass

    def __enter__(self) -> "MemorySampler":
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self._take()
        except Exception:  # noqa: BLE001
            pass


def run_system(
    spec: ServerSpec,
    *,
    model_dir: Path,
    concurrencies: list[int],
    new_tokens: int,
    prompts: list[str],
    min_requests: int,
    per_slot: int,
    timeout_s: float,
    stream: bool = True,
    log_dir: Optional[Path] = None,
    reference: Optional[dict] = None,
) -> dict:
    """Start one server, sweep the concurrencies, stop it. Returns the system's result dict."""
    log_path = (log_dir / f"{spec.name}.log") if log_dir else None
    say(f"{spec.name}: starting ({spec.meta.get('command', '')})")
    result: dict[str, Any] = {
        "label": spec.label,
        "command": spec.meta.get("command", ""),
        "replicas": spec.replicas,
        "kind": spec.kind,
        "streams": spec.stream,
        "points": [],
    }
    server = Server(spec, log_path=log_path)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - reported in the results, the sweep goes on
        say(f"{spec.name}: FAILED to start: {exc}")
        result["failed"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        return result
    try:
        result["startup_s"] = server.startup_s
        if server.ready_info:
            result["serve_args"] = server.ready_info.get("args")
            result["deployment_options"] = server.ready_info.get("deployment_options")
        result["memory_idle"] = server.memory()
        say(f"{spec.name}: ready in {server.startup_s:.1f} s, {result['memory_idle']['tree_pss_mib']:.0f} MiB PSS")
        common = dict(prompts=prompts, tokenizer_dir=str(model_dir), timeout_s=timeout_s)
        # One-time warm-up of the whole server (first-call allocations, lazy initialisation).
        target = loadgen.Target(spec.base_url, spec.kind, new_tokens, False, forced_tokens=spec.forced_tokens)
        loadgen.run_point(target, concurrency=1, requests=2, warmup=0, **common)
        if reference is not None and spec.kind == "completions":
            result["greedy_check"] = greedy_check.check_server(spec.base_url, reference, new_tokens, timeout_s)
            say(f"{spec.name}: greedy text == transformers float32: {result['greedy_check']['matches']}")
        for c in concurrencies:
            n = requests_for(c, min_requests, per_slot)
            w = warmup_for(c)
            with MemorySampler(server) as mem:
                point = loadgen.run_point(target, concurrency=c, requests=n, warmup=w, **common)
                if spec.stream and stream:
                    st = loadgen.Target(spec.base_url, spec.kind, new_tokens, True)
                    point["stream"] = loadgen.run_point(st, concurrency=c, requests=n, warmup=w, **common)
                else:
                    point["stream"] = None
            point["memory"] = mem.peak
            result["points"].append(point)
            ttft = (point["stream"] or {}).get("ttft_s") or {}
            say(f"{spec.name}: c={c:<3} {point['tokens_per_s']:8.1f} tok/s  {point['requests_per_s']:6.2f} req/s  "
                f"p50 {point['latency_s']['p50']}s  p95 {point['latency_s']['p95']}s  "
                f"ttft p50 {ttft.get('p50')}s  errors {point['errors']}"
                + (f"+{point['stream']['errors']}" if point["stream"] else ""))
        if spec.name.startswith("textgen"):
            # The engine's own counters, including the dtype it resolved ("auto" -> bfloat16 or float32).
            try:
                import httpx

                with httpx.Client(timeout=10.0, trust_env=False) as client:
                    result["engine_stats"] = client.get(spec.base_url + "/stats").json()
            except Exception as exc:  # noqa: BLE001
                result["engine_stats"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()
    if spec.name.startswith("textgen"):
        result["dtype"] = (result.get("engine_stats") or {}).get("dtype") or (
            result.get("serve_args") or {}).get("dtype", "float32")
    elif "--dtype" in spec.meta.get("args", []):
        result["dtype"] = spec.meta["args"][spec.meta["args"].index("--dtype") + 1]
    else:
        result["dtype"] = "float32"  # the weights' dtype; the server is not told otherwise
    for key in ("env", "preloaded", "tcmalloc", "versions"):
        if key in spec.meta:
            result[key] = spec.meta[key]
    return result


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_engine_offline(model_dir: Path, new_tokens: int, log_dir: Path, no_openvino: bool) -> dict:
    """The engines-alone stage in a process of its own (ours, then OpenVINO from its venv): its headline block."""
    out = log_dir / "engine_offline.json"
    cmd = [sys.executable, "-m", "bench.engine_offline", "--model-dir", str(model_dir),
           "--new-tokens", str(new_tokens), "--json", str(out)] + (["--no-openvino"] if no_openvino else [])
    say(f"engines alone: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    say(proc.stdout.strip()[-2000:])
    if not out.is_file():
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    report = json.loads(out.read_text())
    return {**report["engine_offline"], "greedy_vs_transformers_fp32": report["greedy_vs_transformers_fp32"]}


def parse_int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark: baseline vs transformers serve vs our Ray Serve app.")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, concurrency 1,4, 8 new tokens, 4 requests a point, one textgen replica")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--concurrency", default=None, help="comma-separated sweep (default 1,8,32)")
    p.add_argument("--systems", default="baseline,peer,vllm,textgen",
                   help="which of baseline,peer,vllm,textgen to run")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM (no venv: `make bench BENCH_VLLM=0`)")
    p.add_argument("--vllm-args", default=DEFAULT_VLLM_ARGS, help="flags for vLLM's OpenAI server")
    p.add_argument("--no-engine-offline", action="store_true",
                   help="skip the engines-alone stage (ours vs OpenVINO GenAI, bench/engine_offline.py)")
    p.add_argument("--no-openvino", action="store_true", help="engines-alone stage without OpenVINO (ours only)")
    p.add_argument("--replicas", default=None, help="textgen replica counts (default: 1 and the CPU count)")
    p.add_argument("--min-requests", type=int, default=None, help="measured requests per point, at least")
    p.add_argument("--per-slot", type=int, default=2, help="measured requests per concurrent slot")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming (TTFT) pass")
    p.add_argument("--peer-args", default=DEFAULT_PEER_ARGS, help="extra flags for transformers serve")
    p.add_argument("--textgen-args", default=DEFAULT_TEXTGEN_ARGS,
                   help="JSON merged into the serve app's args (default: float32, like every peer; "
                        "'{\"dtype\": \"auto\"}' keeps the serve config's choice)")
    p.add_argument("--timeout", type=float, default=900.0, help="client timeout per request, seconds")
    p.add_argument("--note", default=os.environ.get("BENCH_NOTE", ""),
                   help="free text stored with the machine info (e.g. 'machine shared with builds')")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the systems this many times, taking turns; each point reports the median round's "
                        "(bench/rounds.py: this machine's speed drifts more than some of the gaps measured)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--log-dir", type=Path, default=None)
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")

    cpus = os.cpu_count() or 1
    if a.smoke:
        model_dir = a.model_dir or TINY_MODEL
        new_tokens = a.new_tokens or 8
        sweep = parse_int_list(a.concurrency or "1,4")
        replicas = parse_int_list(a.replicas or "1")
        min_requests = a.min_requests or 4
        per_slot = 1
        out = a.out or (ROOT / ".cache" / "bench" / "smoke.json")
    else:
        model_dir = a.model_dir or DEFAULT_MODEL
        new_tokens = a.new_tokens or 50
        sweep = parse_int_list(a.concurrency or "1,8,32")
        replicas = parse_int_list(a.replicas or ",".join(str(r) for r in sorted({1, cpus})))
        min_requests = a.min_requests or 8
        per_slot = a.per_slot
        out = a.out or (RESULTS / "latest.json")
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        say(f"no model in {model_dir}: run `make model` first")
        return 2
    log_dir = a.log_dir or (out.parent if not a.smoke else out.parent / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    wanted = {s.strip() for s in a.systems.split(",") if s.strip()} - ({"vllm"} if a.no_vllm else set())
    prompts = loadgen.load_prompts()

    specs: list[ServerSpec] = []
    if "baseline" in wanted:
        specs.append(baseline_spec(str(model_dir), new_tokens))
    if "peer" in wanted:
        specs.append(peer_spec(str(model_dir), extra_args=a.peer_args.split()))
    if "vllm" in wanted and a.smoke and not venv_python().is_file():
        say(f"vllm: no venv at {venv_python()}, skipped in the smoke run (`make vllm-venv`)")
    elif "vllm" in wanted:
        specs.append(vllm_spec(str(model_dir), model_name(model_dir), cpus=cpus, extra_args=a.vllm_args.split()))
    if "textgen" in wanted:
        for r in replicas:
            specs.append(textgen_spec(str(model_dir), replicas=r, cpus=cpus, app_args=json.loads(a.textgen_args)))

    results: dict[str, Any] = {
        "schema_version": 1,
        "generated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "smoke": bool(a.smoke),
        "model": model_name(model_dir),
        "model_dir": os.path.relpath(model_dir, ROOT) if model_dir.is_relative_to(ROOT) else str(model_dir),
        "cpu_count": cpus,
        "machine": machine_info(a.note),
        "versions": versions(),
        "new_tokens": new_tokens,
        "greedy": True,
        "concurrency": max(sweep),
        "concurrency_sweep": sweep,
        "requests_per_point": {str(c): requests_for(c, min_requests, per_slot) for c in sweep},
        "warmup_per_point": {str(c): warmup_for(c) for c in sweep},
        "prompts": len(prompts),
        "systems": {},
    }
    say(f"model {results['model']} ({results['model_dir']}), {new_tokens} new tokens, sweep {sweep}, "
        f"{cpus} CPUs, systems {[s.name for s in specs]}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5 * cpus:
        say(f"WARNING: load average {load1:.1f} on {cpus} CPUs before starting: other work is running, "
            "the numbers will be low and noisy (recorded in machine.load_avg_at_start)")
    t0 = time.monotonic()
    reference = greedy_check.reference_completion(str(model_dir), prompts[0], new_tokens)
    results["greedy_reference"] = {"prompt": reference["prompt"], "tokens": len(reference["token_ids"]),
                                   "by": "transformers generate(do_sample=False), float32, in the harness"}
    results["rounds"] = a.rounds
    by_round: dict[str, list[dict]] = {spec.name: [] for spec in specs}
    for r in range(a.rounds):
        if a.rounds > 1:
            say(f"round {r + 1} of {a.rounds}")
        for spec in specs:
            by_round[spec.name].append(run_system(
                spec, model_dir=model_dir, concurrencies=sweep, new_tokens=new_tokens, prompts=prompts,
                min_requests=min_requests, per_slot=per_slot, timeout_s=a.timeout, stream=not a.no_stream,
                log_dir=log_dir if a.rounds == 1 else log_dir / f"round-{r + 1}", reference=reference,
            ))
    results["systems"] = {name: merge_rounds(runs) for name, runs in by_round.items()}
    if not a.smoke and not a.no_engine_offline:
        results["engine_offline"] = run_engine_offline(model_dir, new_tokens, log_dir, no_openvino=a.no_openvino)
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results.update(headline(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {out} in {results['duration_s']:.0f} s: ratio {results['ratio']}, peer_ratio {results['peer_ratio']}, "
        f"vllm_ratio {results['vllm_ratio']}, engine_offline {results.get('engine_offline')}, "
        f"errors {results['errors_total']}, failed {results['failed_systems']}")
    from bench import report

    print(report.render_table(results))
    return 0 if not results["failed_systems"] and results["errors_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
