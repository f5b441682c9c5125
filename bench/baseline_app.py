"""The reference: the original single-process architecture, kept as the benchmark's baseline.

One uvicorn process, one FastAPI app, one transformers text-generation pipeline, called from a
plain (threadpool) endpoint: ``GET /generate?query=...`` returns the pipeline's output as is,
``[{"generated_text": "<prompt + continuation>"}]``. No batching, no streaming.

Only what the benchmark needs was added, from the environment so the HTTP interface stays the
original one: which weights to load (``BENCH_MODEL_DIR``) and how many new tokens to generate
(``BENCH_NEW_TOKENS``, default 50, forced exactly with ``min_new_tokens`` and greedy decoding so
that every system produces the same amount of work).

Run: ``BENCH_MODEL_DIR=.models/gpt2-random-init uvicorn bench.baseline_app:app --port 8001``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from transformers import pipeline

MODEL_DIR = os.environ.get("BENCH_MODEL_DIR", "gpt2")
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", "50"))

app = FastAPI(title="baseline: FastAPI + transformers pipeline")
generator = pipeline("text-generation", model=MODEL_DIR, device="cpu")


@app.get("/generate")
def generate(query: str):
    return generator(
        query,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=generator.tokenizer.eos_token_id,
    )
