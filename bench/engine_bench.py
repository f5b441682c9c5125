"""Micro-benchmark of serve_app.engine.GenerationEngine alone (no Ray, no HTTP). Not a test.

Random-initialised GPT-2 124M (GPT2Config defaults, torch.manual_seed(0)), greedy, ``--new-tokens`` new tokens
per request (EOS ignored so every request generates exactly that many), closed loop: at concurrency C, C
clients each send their next request as soon as the previous one ends, ``--requests`` requests per point
(at least C), after one warm-up request.

    .venv/bin/python bench/engine_bench.py                       # concurrency 1, 8, 32, float32
    .venv/bin/python bench/engine_bench.py --variants fp32,bf16 --concurrency 32
    .venv/bin/python bench/engine_bench.py --variants hf-generate,hf-cb --concurrency 1,32

Variants (comma-separated, A/B in one process, same weights, same prompts):
  fp32, bf16             the engine with dtype float32 / bfloat16 (defaults otherwise: attention "auto",
                         mixed prefill, --max-batch-size slots); suffixes change one lever each:
    -sdpa / -mm          decode attention: SDPA / matmul+softmax
    -sep                 prefill new requests in a pass of their own (not inside the decode step)
    -mbN                 max_batch_size N (e.g. bf16-mb16)
  hf-generate            plain ``model.generate`` one request at a time (what a pipeline does), concurrency 1 only
  hf-cb                  transformers' own continuous batching (``model.generate_batch``), all C prompts at once
Prints one JSON line per point and a table at the end; ``--json PATH`` writes all points.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from serve_app.openmp import reexec_with_replica_env  # noqa: E402

if __name__ == "__main__":  # not when imported (tests)
    reexec_with_replica_env()  # the OpenMP runtime a model replica runs with

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from bench.machine import cpu_info  # noqa: E402  (the CPU flags go with every measurement)
from serve_app.engine import GenerationEngine, GenerationRequest  # noqa: E402


def engine_kwargs(variant: str, max_batch_size: int) -> dict:
    """'bf16-sdpa-sep-mb16' -> dtype bfloat16, SDPA attention, separate prefill pass, max_batch_size 16."""
    parts = variant.split("-")
    kw = dict(dtype={"fp32": "float32", "bf16": "bfloat16"}[parts[0]], max_batch_size=max_batch_size)
    for p in parts[1:]:
        if p in ("sdpa", "mm"):
            kw["attention"] = "sdpa" if p == "sdpa" else "matmul"
        elif p == "sep":
            kw["mixed_prefill"] = False
        elif p.startswith("mb"):
            kw["max_batch_size"] = int(p[2:])
        else:
            raise SystemExit(f"unknown variant part {p!r} in {variant!r}")
    return kw


def make_prompts(n: int, vocab: int, lo: int, hi: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        out.append(torch.randint(0, vocab - 1, (length,), generator=g).tolist())
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


async def run_engine_point(engine: GenerationEngine, prompts, conc: int, n_req: int, new_tokens: int,
                           jitter: float = 0.0) -> dict:
    queue = list(range(n_req))
    lat, ttft, toks = [], [], 0

    async def one(i: int):
        nonlocal toks
        t0 = time.perf_counter()
        first = None
        n = 0
        async for _ in engine.generate(GenerationRequest(prompts[i % len(prompts)], new_tokens, temperature=0,
                                                         ignore_eos=True)):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
        lat.append(time.perf_counter() - t0)
        ttft.append(first)
        toks += n

    rng = random.Random(99)

    async def client():
        while queue:
            if jitter:  # think time: spreads arrivals so requests join a running batch one by one
                await asyncio.sleep(rng.uniform(0, jitter))
            if queue:
                await one(queue.pop())

    await one(0)  # warm-up, excluded
    lat.clear(), ttft.clear()
    toks = 0
    s0 = engine.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(conc)])
    wall = time.perf_counter() - t0
    s1 = engine.stats()
    steps = s1["batch_size_count"] - s0["batch_size_count"]
    mean_bs = (s1["batch_size_sum"] - s0["batch_size_sum"]) / steps if steps else 0
    return dict(requests=n_req, wall_s=round(wall, 3), tokens_per_s=round(toks / wall, 1),
                p50_s=round(pct(lat, 50), 3), p95_s=round(pct(lat, 95), 3), ttft_p50_s=round(pct(ttft, 50), 3),
                mean_batch=round(mean_bs, 2))


def run_hf_generate(model, prompts, n_req: int, new_tokens: int) -> dict:
    lat = []
    toks = 0
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                       pad_token_id=model.config.eos_token_id)
        t0 = time.perf_counter()
        for i in range(n_req):
            s = time.perf_counter()
            out = model.generate(torch.tensor([prompts[i % len(prompts)]]), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
            lat.append(time.perf_counter() - s)
            toks += out.shape[1] - len(prompts[i % len(prompts)])
        wall = time.perf_counter() - t0
    return dict(requests=n_req, wall_s=round(wall, 3), tokens_per_s=round(toks / wall, 1),
                p50_s=round(pct(lat, 50), 3), p95_s=round(pct(lat, 95), 3))


def run_hf_cb(model, prompts, conc: int, new_tokens: int) -> dict:
    """transformers' continuous batching: all `conc` prompts submitted together (an upper bound for a server)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
    inputs = [prompts[i % len(prompts)] for i in range(conc)]
    with torch.inference_mode():
        model.generate_batch(inputs=inputs[:2], generation_config=gc)  # warm-up
        t0 = time.perf_counter()
        res = model.generate_batch(inputs=inputs, generation_config=gc)
        wall = time.perf_counter() - t0
    toks = sum(len(r.generated_tokens) for r in res.values())
    return dict(requests=conc, wall_s=round(wall, 3), tokens_per_s=round(toks / wall, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="fp32")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=0, help="requests per point (default: max(4, 2*C))")
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--prompt-len", default="8,16", help="min,max prompt tokens")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--layers", type=int, default=0, help="override n_layer (quick runs)")
    ap.add_argument("--jitter", type=float, default=0.0, help="max think time (s) before each request")
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    threads = a.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config() if not a.layers else GPT2Config(n_layer=a.layers)
    model = GPT2LMHeadModel(cfg).eval()
    lo, hi = (int(x) for x in a.prompt_len.split(","))
    prompts = make_prompts(64, cfg.vocab_size, lo, hi)
    concs = [int(c) for c in a.concurrency.split(",")]
    env = dict(cpus=os.cpu_count(), threads=threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
               torch=torch.__version__, machine=platform.processor() or platform.machine(),
               loadavg=os.getloadavg()[0], new_tokens=a.new_tokens, n_layer=cfg.n_layer, jitter=a.jitter,
               cpu=cpu_info())
    print(json.dumps({"env": env}), flush=True)
    rows = []
    for variant in a.variants.split(","):
        for c in concs:
            n_req = a.requests or max(4, 2 * c)
            t0 = time.perf_counter()
            if variant == "hf-generate":
                if c != 1:
                    continue
                r = run_hf_generate(model, prompts, n_req, a.new_tokens)
            elif variant == "hf-cb":
                r = run_hf_cb(model, prompts, c, a.new_tokens)
            else:
                eng = GenerationEngine(model, num_threads=threads, **engine_kwargs(variant, a.max_batch_size))
                try:
                    r = asyncio.run(run_engine_point(eng, prompts, c, n_req, a.new_tokens, a.jitter))
                finally:
                    eng.shutdown()
            r.update(variant=variant, concurrency=c, loadavg=round(os.getloadavg()[0], 2),
                     point_s=round(time.perf_counter() - t0, 1))
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\n| variant | conc | tok/s | p50 s | p95 s | ttft p50 s | mean batch | loadavg |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['concurrency']} | {r['tokens_per_s']} | {r.get('p50_s', '')} | "
              f"{r.get('p95_s', '')} | {r.get('ttft_p50_s', '')} | {r.get('mean_batch', '')} | {r['loadavg']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "points": rows}, f, indent=2)


if __name__ == "__main__":
    main()
