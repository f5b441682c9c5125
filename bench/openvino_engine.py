"""OpenVINO GenAI's ContinuousBatchingPipeline on the engine benchmark's workload. Runs in its OWN venv.

    .cache/venvs/openvino/bin/python bench/openvino_engine.py --model-dir .cache/openvino/gpt2-random-init-fp32 \
        --prompt-ids ids.json --json out.json

Started as a subprocess by ``bench/engine_offline.py`` (``make engine-bench``, ``make bench``) with the
interpreter of ``.cache/venvs/openvino`` (``make openvino-venv``): nothing here imports the project or torch.
The model directory is what ``optimum-cli export openvino --task text-generation-with-past`` wrote
(``make openvino-models``, offline, from the stand-in in ``.models/``).

Workload (the same as ours in ``engine_offline.py``): the prompts' token ids (tokenized by the caller with the
model's tokenizer, so both engines see identical inputs), ``--new-tokens`` greedy tokens each with EOS
ignored, float32 compute and KV cache (OpenVINO's CPU defaults are bf16 compute where the CPU has it and a
u8-quantized KV cache: ``--precision`` / ``--kv-cache-precision`` change them). One warm-up batch (not
counted), then ``--repeats`` measured batches of all prompts submitted at once, and ``--repeats`` single-prompt
runs for the batch-1 latency. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time


def scheduler_config(ov_genai, cache_gb: int, max_num_seqs: int, max_batched_tokens: int):
    sc = ov_genai.SchedulerConfig()
    sc.cache_size = cache_gb  # GB of KV cache (the default, 0, sizes it from num_kv_blocks)
    sc.max_num_seqs = max_num_seqs
    sc.max_num_batched_tokens = max_batched_tokens
    sc.dynamic_split_fuse = True  # prefill chunks share steps with decoding (the pipeline's default)
    sc.enable_prefix_caching = False  # 32 distinct prompts: nothing to reuse, and ours has no prefix cache
    return sc


def greedy_config(ov_genai, new_tokens: int):
    gc = ov_genai.GenerationConfig()
    gc.max_new_tokens = new_tokens
    gc.min_new_tokens = new_tokens
    gc.ignore_eos = True  # random weights: count exactly new_tokens per prompt, as ours does
    gc.do_sample = False
    return gc


def run_batch(pipe, ov, ov_genai, prompt_ids: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    inputs = [ov.Tensor(__import__("numpy").array([ids], dtype="int64")) for ids in prompt_ids]
    configs = [greedy_config(ov_genai, new_tokens) for _ in prompt_ids]
    t0 = time.perf_counter()
    results = pipe.generate(inputs, configs)
    wall = time.perf_counter() - t0
    return wall, [list(r.m_generation_ids[0]) for r in results]


def rss_mib() -> float:
    """This process's resident memory now (weights, KV cache, compiled kernels), from /proc."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompt-ids", required=True, help="JSON file: a list of token-id lists")
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (0: OpenVINO's default)")
    ap.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT (f32: no bf16/f16 compute)")
    ap.add_argument("--kv-cache-precision", default="f32",
                    help="KV_CACHE_PRECISION (OpenVINO's CPU default is u8, a quantized cache: f32 keeps float32)")
    ap.add_argument("--cache-gb", type=int, default=1)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-batched-tokens", type=int, default=2048)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)

    import openvino as ov
    import openvino_genai as ov_genai

    prompt_ids = json.loads(open(a.prompt_ids).read())
    props = {"INFERENCE_PRECISION_HINT": a.precision}
    if a.kv_cache_precision:
        props["KV_CACHE_PRECISION"] = a.kv_cache_precision
    if a.threads:
        props["INFERENCE_NUM_THREADS"] = a.threads
    t0 = time.perf_counter()
    pipe = ov_genai.ContinuousBatchingPipeline(
        a.model_dir, scheduler_config(ov_genai, a.cache_gb, a.max_num_seqs, a.max_batched_tokens), "CPU", props)
    load_s = time.perf_counter() - t0

    run_batch(pipe, ov, ov_genai, prompt_ids, a.new_tokens)  # warm-up: kernels, KV-cache allocation
    batch_walls, tokens = [], None
    for _ in range(a.repeats):
        wall, tokens = run_batch(pipe, ov, ov_genai, prompt_ids, a.new_tokens)
        batch_walls.append(wall)
    generated = sum(len(t) for t in tokens)
    single_walls = []
    for _ in range(a.repeats + 1):
        wall, _ = run_batch(pipe, ov, ov_genai, prompt_ids[:1], a.new_tokens)
        single_walls.append(wall)

    out = {
        "engine": "openvino-genai ContinuousBatchingPipeline",
        "model_dir": a.model_dir,
        "versions": {"openvino": ov.get_version(), "openvino_genai": getattr(ov_genai, "__version__", None)},
        "config": {"device": "CPU", "properties": props, "cache_size_gb": a.cache_gb,
                   "max_num_seqs": a.max_num_seqs, "max_num_batched_tokens": a.max_batched_tokens,
                   "dynamic_split_fuse": True, "enable_prefix_caching": False,
                   "inference_num_threads": a.threads or f"OpenVINO's default ({os.cpu_count()} cores here)"},
        "load_s": round(load_s, 2),
        "sequences": len(prompt_ids),
        "new_tokens": a.new_tokens,
        "generated_tokens": generated,
        "batch_wall_s": [round(w, 3) for w in batch_walls],
        # tokens/s of the mean batch wall time over the measured repeats
        "tokens_per_s": round(generated / statistics.mean(batch_walls), 1),
        "batch1_latency_s": round(statistics.median(single_walls[1:] or single_walls), 3),
        "batch1_latency_all_s": [round(w, 3) for w in single_walls],
        "tokens": tokens,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mib_after_runs": rss_mib(),
        "pid": os.getpid(),
    }
    text = json.dumps(out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "tokens"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
