"""Engines alone, no HTTP: our GenerationEngine next to OpenVINO GenAI's ContinuousBatchingPipeline.

    .venv/bin/python -m bench.engine_offline                   # ours + OpenVINO fp32 and int8 (make engine-bench)
    .venv/bin/python -m bench.engine_offline --no-openvino     # ours only

The same workload for every engine: the weights of ``make model`` (``.models/gpt2-random-init``; OpenVINO
runs the IR that ``make openvino-models`` exported from them), the 32 prompts of ``bench/prompts.txt``
tokenized once here with the model's tokenizer (both engines get the same ids), 50 new greedy tokens each
with EOS ignored, float32 compute. Measured, after one warm-up batch: all 32 prompts submitted at once
(tokens/s of the mean wall time over ``--repeats`` batches) and the batch-1 latency of one prompt (median).
One engine at a time: ours here (2 torch threads, the OpenMP runtime a model replica gets: serve_app/openmp.py),
OpenVINO as a subprocess from its own venv (``bench/openvino_engine.py``).

Greedy check: the first ``--check-prompts`` prompts' tokens from every engine are compared with transformers'
float32 ``generate(do_sample=False)`` on the same weights, up to the first end-of-text token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from serve_app.openmp import loaded_runtime, reexec_with_replica_env  # noqa: E402

if __name__ == "__main__":  # not when imported (tests)
    reexec_with_replica_env("bench.engine_offline")  # the OpenMP runtime a model replica runs with

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".models" / "gpt2-random-init"
OPENVINO_VENV = Path(os.environ.get("BENCH_OPENVINO_VENV", ROOT / ".cache" / "venvs" / "openvino"))
OPENVINO_MODELS = ROOT / ".cache" / "openvino"
OPENVINO_VARIANTS = ("fp32", "int8")


def openvino_model_dir(model_dir: Path, variant: str) -> Path:
    """Where ``make openvino-models`` exports ``model_dir`` with ``--weight-format variant``."""
    return OPENVINO_MODELS / f"{Path(model_dir).name}-{variant}"


def greedy_agreement(reference: list[list[int]], candidate: list[list[int]], eos: Optional[int]) -> dict:
    """Pure: how many sequences are token-for-token equal, each cut after its first ``eos`` (end of text)."""

    def cut(ids: list[int]) -> list[int]:
        return ids[: ids.index(eos) + 1] if eos is not None and eos in ids else list(ids)

    same = [cut(r) == cut(c[: len(r)]) for r, c in zip(reference, candidate)]
    first_diff = []
    for r, c in zip(reference, candidate):
        r, c = cut(r), cut(c[: len(r)])
        first_diff.append(next((i for i, (x, y) in enumerate(zip(r, c)) if x != y), None))
    return {"compared": len(same), "identical": sum(same), "first_difference_at": first_diff}


def headline(report: dict) -> dict:
    """Pure: the ``engine_offline`` block of bench/results/latest.json (tokens/s at all sequences at once)."""
    ov = report.get("openvino") or {}
    engines = {"ours": report.get("ours") or {}, "ours_int8": report.get("ours_int8") or {},
               "openvino": ov.get("fp32") or {}, "openvino_int8": ov.get("int8") or {}}
    errors = {k: v["error"] for k, v in engines.items() if v.get("error")}
    return {
        "sequences": report.get("sequences"),
        "new_tokens": report.get("new_tokens"),
        **{k: v.get("tokens_per_s") for k, v in engines.items()},
        "batch1_latency_s": {k: v.get("batch1_latency_s") for k, v in engines.items()},
        "dtype": {"ours": "float32", "ours_int8": "int8 weights, float32 activations", "openvino": "float32",
                  "openvino_int8": "int8 weights, f32 compute"},
        "errors": errors,
    }


async def _run_ours_batch(engine, prompt_ids, new_tokens) -> tuple[float, list[list[int]]]:
    from serve_app.engine import GenerationRequest

    async def one(ids):
        return [t async for t in engine.generate(GenerationRequest(ids, new_tokens, temperature=0, ignore_eos=True))]

    t0 = time.perf_counter()
    tokens = await asyncio.gather(*[one(ids) for ids in prompt_ids])
    return time.perf_counter() - t0, [list(t) for t in tokens]


def measure_ours(model, prompt_ids, new_tokens: int, repeats: int, threads: int, dtype: str = "float32") -> dict:
    from serve_app.engine import GenerationEngine

    try:
        engine = GenerationEngine(model, max_batch_size=len(prompt_ids), num_threads=threads, dtype=dtype)
    except ValueError as exc:  # a dtype this version of the engine does not have
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        asyncio.run(_run_ours_batch(engine, prompt_ids, new_tokens))  # warm-up
        walls, tokens = [], None
        for _ in range(repeats):
            wall, tokens = asyncio.run(_run_ours_batch(engine, prompt_ids, new_tokens))
            walls.append(wall)
        singles = [asyncio.run(_run_ours_batch(engine, prompt_ids[:1], new_tokens))[0] for _ in range(repeats + 1)]
    finally:
        engine.shutdown()
    generated = sum(len(t) for t in tokens)
    return {
        "engine": "ours: serve_app.engine.GenerationEngine", "dtype": dtype, "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "openmp": loaded_runtime(), "max_batch_size": len(prompt_ids),
        "generated_tokens": generated, "batch_wall_s": [round(w, 3) for w in walls],
        "tokens_per_s": round(generated / statistics.mean(walls), 1),
        "batch1_latency_s": round(statistics.median(singles[1:]), 3),
        "batch1_latency_all_s": [round(w, 3) for w in singles], "tokens": tokens,
    }


def measure_openvino(model_dir: Path, variant: str, ids_file: Path, new_tokens: int, repeats: int,
                     extra_args: list[str]) -> dict:
    ov_dir = openvino_model_dir(model_dir, variant)
    python = OPENVINO_VENV / "bin" / "python"
    if not python.is_file() or not (ov_dir / "openvino_model.xml").is_file():
        return {"error": f"missing {python if not python.is_file() else ov_dir}: run `make openvino-models`"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [str(python), str(ROOT / "bench" / "openvino_engine.py"), "--model-dir", str(ov_dir),
           "--prompt-ids", str(ids_file), "--new-tokens", str(new_tokens), "--repeats", str(repeats),
           "--json", str(out), *extra_args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OMP_WAIT_POLICY", "LD_PRELOAD", "TEXTGEN_REPLICA_ENV")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    result["command"] = " ".join(["python bench/openvino_engine.py", "--model-dir", os.path.relpath(ov_dir, ROOT),
                                  *extra_args])
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--sequences", type=int, default=32, help="prompts submitted at once")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="our torch threads (default: all cores)")
    ap.add_argument("--check-prompts", type=int, default=4, help="prompts checked against transformers' greedy")
    ap.add_argument("--ours-int8", action=argparse.BooleanOptionalAction, default=True,
                    help="also ours with dtype int8 (int8 weights), next to OpenVINO's int8")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--openvino-variants", default=",".join(OPENVINO_VARIANTS))
    ap.add_argument("--openvino-args", default="", help="extra flags for bench/openvino_engine.py")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "engine_offline.json")
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from bench import loadgen, machine

    threads = a.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    prompts = loadgen.load_prompts()
    prompt_ids = [tok(prompts[i % len(prompts)])["input_ids"] for i in range(a.sequences)]
    model = GPT2LMHeadModel.from_pretrained(a.model_dir, dtype=torch.float32).eval()
    eos = model.config.eos_token_id

    report: dict = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "model_dir": os.path.relpath(a.model_dir.resolve(), ROOT), "sequences": a.sequences,
                    "new_tokens": a.new_tokens, "prompts": "bench/prompts.txt", "greedy": True, "ignore_eos": True,
                    "repeats": a.repeats, "machine": machine.machine_info(os.environ.get("BENCH_NOTE")),
                    "versions": machine.versions()}
    print(f"[engine-offline] {a.sequences} sequences x {a.new_tokens} tokens, ours ({threads} threads)...", flush=True)
    report["ours"] = measure_ours(model, prompt_ids, a.new_tokens, a.repeats, threads)
    if a.ours_int8:
        print("[engine-offline] ours, int8 weights...", flush=True)
        report["ours_int8"] = measure_ours(model, prompt_ids, a.new_tokens, a.repeats, threads, dtype="int8")
    with torch.inference_mode():
        reference = [model.generate(torch.tensor([ids]), max_new_tokens=a.new_tokens, do_sample=False,
                                    pad_token_id=eos)[0, len(ids):].tolist() for ids in prompt_ids[:a.check_prompts]]
    del model
    checks = {key: greedy_agreement(reference, report[key]["tokens"], eos)
              for key in ("ours", "ours_int8") if "tokens" in report.get(key, {})}
    report["openvino"] = {}
    if not a.no_openvino:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(prompt_ids, f)
        for variant in [v for v in a.openvino_variants.split(",") if v]:
            print(f"[engine-offline] OpenVINO GenAI {variant}...", flush=True)
            r = measure_openvino(a.model_dir, variant, Path(f.name), a.new_tokens, a.repeats, a.openvino_args.split())
            report["openvino"][variant] = r
            if "tokens" in r:
                checks[f"openvino_{variant}"] = greedy_agreement(reference, r["tokens"], eos)
        Path(f.name).unlink(missing_ok=True)
    report["greedy_vs_transformers_fp32"] = checks
    report["engine_offline"] = headline(report)
    for r in [report["ours"], report.get("ours_int8", {}), *report["openvino"].values()]:
        r.pop("tokens", None)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0 if not report["engine_offline"]["errors"] else 1


def render(report: dict) -> str:
    rows = ["| engine | dtype | 32 at once: tok/s | batch-1, 50 tokens: s | greedy = transformers fp32 |",
            "|---|---|---:|---:|---|"]
    checks = report.get("greedy_vs_transformers_fp32", {})
    entries = [("ours", "float32", report.get("ours") or {}, checks.get("ours"))]
    if report.get("ours_int8"):
        entries.append(("ours int8", "int8 weights", report["ours_int8"], checks.get("ours_int8")))
    for v, r in (report.get("openvino") or {}).items():
        entries.append((f"OpenVINO GenAI {v}", "float32" if v == "fp32" else f"{v} weights", r,
                        checks.get(f"openvino_{v}")))
    for name, dtype, r, chk in entries:
        if r.get("error"):
            rows.append(f"| {name} | {dtype} | error: {r['error'][:80]} | | |")
            continue
        agree = f"{chk['identical']}/{chk['compared']}" if chk else "–"
        rows.append(f"| {name} | {dtype} | {r['tokens_per_s']} | {r['batch1_latency_s']} | {agree} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
