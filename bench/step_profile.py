"""Profile one engine step (our GPT-2 runner alone) at several batch sizes: step time and where it goes. Not a test.

    .venv/bin/python bench/step_profile.py                          # float32, batches 1,8,32, context 40
    .venv/bin/python bench/step_profile.py --dtype int8 --threads 2 --context 100

Step time is the CPU time of the calling thread (``time.thread_time``) with ``--threads 1`` (the default), so
other processes on a shared machine do not inflate it; with more threads it is wall time. The split is
``torch.profiler``'s self CPU time per op, grouped (linear layers, attention, KV-cache writes, the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from serve_app.openmp import loaded_runtime, reexec_with_replica_env  # noqa: E402

if __name__ == "__main__":  # not when imported
    reexec_with_replica_env()  # the OpenMP runtime a model replica runs with (read when torch loads)

import torch  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

from bench.machine import cpu_info  # noqa: E402
from serve_app.engine.gpt2_runner import GPT2Runner  # noqa: E402
from serve_app.engine.model_runner import StepInputs  # noqa: E402

GROUPS = {  # op name fragment -> group
    "linear": "linear layers", "addmm": "linear layers", "aten::mm": "linear layers", "quantized": "linear layers",
    "bmm": "attention", "softmax": "attention", "scaled_dot_product": "attention",
    "index_copy": "KV-cache writes",
}


def group_of(op: str) -> str:
    return next((g for frag, g in GROUPS.items() if frag in op), "other (norms, GELU, adds, Python)")


def step_ms(runner: GPT2Runner, step: StepInputs, reps: int, cpu_clock: bool) -> float:
    clock = time.thread_time if cpu_clock else time.perf_counter
    runner.forward(step)
    ts = []
    for _ in range(reps):
        t0 = clock()
        runner.forward(step)
        ts.append(clock() - t0)
    return round(min(ts) * 1e3, 1)


def split(runner: GPT2Runner, step: StepInputs) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            runner.forward(step)
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        totals[group_of(ev.key)] = totals.get(group_of(ev.key), 0.0) + ev.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {g: round(100 * v / whole, 1) for g, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=os.path.join(os.path.dirname(__file__), "..", ".models", "gpt2-random-init"))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--context", type=int, default=40, help="tokens already in each row's KV cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "matmul"], help="decode attention")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    runner = GPT2Runner(GPT2LMHeadModel.from_pretrained(a.model_dir).eval(), dtype=a.dtype, max_slots=max(batches),
                        attention=a.attention)
    out = {"dtype": a.dtype, "attention": runner.attention, "threads": a.threads, "openmp": loaded_runtime(),
           "context": a.context, "cpu": cpu_info(),
           "clock": "thread CPU time" if a.threads == 1 else "wall", "points": []}
    with torch.inference_mode():
        runner.warmup(max(batches))
        runner.cache.ensure(a.context + 1, max(batches))
        for b in batches:
            step = StepInputs([5] * b, [a.context] * b, [], b)
            point = {"batch": b, "step_ms": step_ms(runner, step, a.reps, a.threads == 1), "split_pct": split(runner, step)}
            out["points"].append(point)
            print(json.dumps(point), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
