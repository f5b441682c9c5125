"""Generation engine: iteration-level (continuous) batching for GPT-2 on CPU, no Ray inside.

`GenerationEngine` wraps a loaded Hugging Face `GPT2LMHeadModel` and runs its own, small GPT-2 forward pass
over the model's weights (the same tensors, no copy in float32) with a slot-based static KV cache:

* a background thread runs the step loop; each iteration admits waiting requests into free slots
  (one batched, right-padded prefill for all of them), then runs ONE decode step for every running request;
  finished or cancelled requests leave the batch at once, new ones join at the next iteration;
* the KV cache is ``[layers, slots, heads, capacity, head_dim]``; running requests always occupy slots
  ``0..n-1`` (a finished request's slot is refilled by moving the last one into it), so every step works on
  plain slices of the cache, no gathers; the capacity grows by doubling up to ``max_context``;
* at decode time logits are computed for the last position only;
* tokens stream to asyncio consumers through per-request ``asyncio.Queue`` fed with
  ``loop.call_soon_threadsafe``.

Usage::

    engine = GenerationEngine(model, max_batch_size=16)
    async for token_id in engine.generate(GenerationRequest(prompt_ids=[...], max_new_tokens=50, temperature=0)):
        ...
    engine.stats(); engine.shutdown()

`generate()` submits the request immediately (it is a plain method returning a `GenerationStream`), so
`EngineOverloaded` / `ValueError` are raised at the call, before the first token.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "EngineOverloaded",
    "EngineStopped",
    "GenerationEngine",
    "GenerationRequest",
    "GenerationStream",
    "BATCH_SIZE_BUCKETS",
]

# Upper bounds of the batch-size histogram buckets (Prometheus style, cumulative counts in stats()).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16). Elsewhere (e.g. the Skylake and
    Cascade Lake cores of m5 instances) bfloat16 is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    """'auto' -> 'bfloat16' where the CPU has native bf16 (about 2x the tokens/s, bench/ENGINE.md), else 'float32'."""
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return dtype


class EngineOverloaded(RuntimeError):
    """The waiting queue is full (``max_waiting``); the API should answer 503 + Retry-After."""


class EngineStopped(RuntimeError):
    """The engine was shut down; no new requests are accepted and running ones are ended with this."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation request in token ids.

    temperature 0 means greedy (argmax); ``stop_token_ids=None`` means the model's EOS token; stop tokens end the
    request and are NOT yielded (``finish_reason == "stop"``); ``ignore_eos`` drops EOS from the stop set.
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int = 50
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    request_id: str | None = None


_END = object()  # end-of-stream sentinel put on a request's queue


@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    prompt: list[int]
    stops: frozenset[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    generator: torch.Generator | None
    id: int
    arrival: float = field(default_factory=time.monotonic)
    pos: int = 0  # tokens in the KV cache
    last_token: int = -1  # next token to feed
    generated: int = 0
    emitted: int = 0
    finish_reason: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    done: bool = False
    first_token_time: float | None = None


class GenerationStream:
    """What `GenerationEngine.generate` returns: an async iterator of token ids plus the request's outcome.

    After iteration ends: ``finish_reason`` is ``"stop"`` (a stop token), ``"length"`` (max_new_tokens), or
    ``"cancelled"``; ``prompt_tokens`` / ``completion_tokens`` count tokens. Leaving the loop early (break,
    task cancelled, client disconnect) cancels the request and frees its slot.
    """

    def __init__(self, engine: "GenerationEngine", seq: _Seq):
        self._engine = engine
        self._seq = seq
        self._agen = self._run()

    async def _run(self) -> AsyncIterator[int]:
        seq = self._seq
        try:
            while True:
                item = await seq.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not seq.done:
                self._engine._cancel(seq)

    def __aiter__(self) -> AsyncIterator[int]:
        return self._agen

    def __anext__(self):
        return self._agen.__anext__()

    async def aclose(self) -> None:
        await self._agen.aclose()

    def cancel(self) -> None:
        """Cancel the request (thread-safe); the stream then ends with finish_reason 'cancelled'."""
        self._engine._cancel(self._seq)

    async def collect(self) -> list[int]:
        return [t async for t in self._agen]

    @property
    def request_id(self) -> str | None:
        return self._seq.req.request_id

    @property
    def finish_reason(self) -> str | None:
        return self._seq.finish_reason

    @property
    def prompt_tokens(self) -> int:
        return len(self._seq.prompt)

    @property
    def completion_tokens(self) -> int:
        return self._seq.emitted

    @property
    def time_to_first_token_s(self) -> float | None:
        s = self._seq
        return None if s.first_token_time is None else s.first_token_time - s.arrival


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # gelu_new exactly as transformers computes it (keeps greedy tokens identical to HF in float32).
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _row_bucket(m: int) -> int:
    """Row count a oneDNN matmul runs at: exact up to 8, then multiples of 16, then of 64 past 256."""
    if m <= 8:
        return m
    if m <= 256:
        return (m + 15) // 16 * 16
    return (m + 63) // 64 * 64


class _Linear:
    """``x @ W + b`` for a weight given as [in, out] (HF Conv1D layout).

    float32: ``torch.addmm`` on the model's own tensor (no copy, bit-for-bit HF's math). bfloat16: the weight is
    cast and pre-packed once for oneDNN (AMX on CPUs that have it; ``packed_batch`` is a layout hint, any batch
    size works), with the tanh-GELU fused into the matmul for the MLP; plain ``F.linear`` if oneDNN is missing.
    """

    def __init__(self, w_in_out: torch.Tensor, bias: torch.Tensor | None, cdt: torch.dtype, packed_batch: int):
        self.cdt = cdt
        w_in_out = w_in_out.detach()
        self.b = None if bias is None else bias.detach().to(cdt)
        if cdt == torch.float32:
            self.kind, self.w = "addmm", w_in_out.float()
            return
        wt = w_in_out.t().to(cdt).contiguous()  # [out, in]
        self.kind, self.w = "linear", wt
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(wt, batch_size=packed_batch)
            probe = torch.zeros(2, wt.shape[1], dtype=cdt)
            torch.ops.mkldnn._linear_pointwise(probe, packed, self.b, "none", [], "")
            self.kind, self.w = "dnnl", packed
        except Exception:  # pragma: no cover - torch built without oneDNN
            log.info("oneDNN packed linear unavailable; using F.linear for %s", cdt)

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.kind == "addmm":
            y = torch.mm(x, self.w) if self.b is None else torch.addmm(self.b, x, self.w)
        elif self.kind == "dnnl":
            # oneDNN builds (JITs) a kernel per new row count M (~1.5 ms per weight shape, measured); mixed
            # decode+prefill steps produce many distinct M, so pad M up to a few buckets to reuse kernels.
            m = x.shape[0]
            mp = _row_bucket(m)
            if mp != m:
                x = torch.cat([x, x.new_zeros(mp - m, x.shape[1])])
            y = torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "gelu" if gelu else "none", [],
                                                   "tanh" if gelu else "")
            return y if mp == m else y[:m]
        else:
            y = F.linear(x, self.w, self.b)
        return _gelu_new(y) if gelu else y


class _Weights:
    """GPT-2 weights as plain tensors / `_Linear`s, laid out for the forward pass."""

    def __init__(self, model: torch.nn.Module, cdt: torch.dtype, packed_batch: int):
        cfg = model.config
        tr = model.transformer
        self.cdt = cdt
        self.n_layer = cfg.n_layer
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.head_dim = cfg.n_embd // cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        self.vocab = cfg.vocab_size
        self.n_positions = cfg.n_positions

        def d(t: torch.Tensor) -> torch.Tensor:
            return t.detach()

        def lin(conv) -> _Linear:
            return _Linear(conv.weight, conv.bias, cdt, packed_batch)

        self.wte = d(tr.wte.weight).float()  # [V, E] embedding lookups stay fp32
        self.wpe = d(tr.wpe.weight).float()
        head = getattr(model, "lm_head", None)
        lm = head.weight if head is not None else tr.wte.weight  # [V, E]; tied to wte for GPT-2
        self.lm_head = _Linear(lm.t(), getattr(head, "bias", None), cdt, packed_batch)
        self.ln_f = (d(tr.ln_f.weight), d(tr.ln_f.bias))
        self.layers = []
        for i, blk in enumerate(tr.h):
            scale = 1.0 / math.sqrt(self.head_dim) if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            self.layers.append(
                dict(
                    ln1=(d(blk.ln_1.weight), d(blk.ln_1.bias)),
                    attn=lin(blk.attn.c_attn),
                    proj=lin(blk.attn.c_proj),
                    ln2=(d(blk.ln_2.weight), d(blk.ln_2.bias)),
                    fc=lin(blk.mlp.c_fc),
                    mp=lin(blk.mlp.c_proj),
                    scale=scale,
                )
            )


def _check_supported(model: torch.nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "gpt2":
        raise TypeError(f"GenerationEngine supports GPT-2 (model_type 'gpt2'), got {getattr(cfg, 'model_type', None)!r}")
    if getattr(cfg, "add_cross_attention", False):
        raise TypeError("cross-attention GPT-2 variants are not supported")
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu"):
        raise TypeError(f"unsupported activation {cfg.activation_function!r}")
    if next(model.parameters()).device.type != "cpu":
        raise TypeError("GenerationEngine runs on CPU; move the model to CPU first")


class GenerationEngine:
    """Continuous-batching GPT-2 generation on CPU (see the module docstring).

    Parameters: ``max_batch_size`` running requests (KV-cache slots); ``max_context`` tokens per request
    (prompt + new tokens, at most the model's n_positions); ``dtype`` "float32" (default, exact) or
    "bfloat16" (AMX matmuls, numerics change: off by default); ``max_waiting`` bounds the queue of requests not
    yet running (None = unbounded) and ``generate`` raises `EngineOverloaded` beyond it; ``num_threads`` sets
    torch's intra-op threads in the engine thread (None = leave as is); ``prefill_token_budget`` caps the
    padded prompt tokens prefilled in one iteration (at least one request is always admitted);
    ``attention`` "auto", "sdpa" or "matmul" (decode-step attention; auto picks what measured
    fastest for the dtype); ``mixed_prefill`` prefills new requests inside the decode step's forward pass
    (True) instead of in a pass of their own; ``warmup`` runs one tiny
    forward at start so the first request does not pay kernel set-up.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch_size: int = 16,
        max_context: int = 1024,
        dtype: str = "float32",
        max_waiting: int | None = None,
        num_threads: int | None = None,
        prefill_token_budget: int = 4096,
        initial_cache_tokens: int = 256,
        attention: str = "auto",
        mixed_prefill: bool = True,
        warmup: bool = True,
        name: str = "gpt2-engine",
    ):
        _check_supported(model)
        dtype = resolve_dtype(dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if attention not in ("auto", "sdpa", "matmul"):
            raise ValueError("attention must be 'auto', 'sdpa' or 'matmul'")
        self.dtype = dtype
        self.cdt = _DTYPES[dtype]
        self.max_batch_size = int(max_batch_size)
        self.max_waiting = max_waiting
        self.num_threads = num_threads
        self.prefill_token_budget = int(prefill_token_budget)
        self.mixed_prefill = bool(mixed_prefill)
        # measured (bench/ENGINE.md): matmul+softmax is fastest in float32 at short contexts, SDPA in bfloat16
        self.attention = attention if attention != "auto" else ("matmul" if dtype in ("float32", "fp32") else "sdpa")
        cfg = model.config
        self.eos_token_id = cfg.eos_token_id
        self.vocab_size = cfg.vocab_size
        self.max_context = int(min(max_context, cfg.n_positions))
        self.model = model
        self.w = _Weights(model, self.cdt, self.max_batch_size)
        self._cache_cap = 0
        self._slot_cap = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._ensure_capacity(min(self.max_context, max(16, initial_cache_tokens)), min(2, self.max_batch_size))

        self._cond = threading.Condition()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []  # index == KV-cache slot
        self._ids = itertools.count(1)
        self._stopping = False
        self._stats_lock = threading.Lock()
        self._counters = collections.Counter()
        self._bs_hist = collections.Counter()  # batch size -> decode steps
        self._rng = random.Random()
        if warmup:
            self._warmup()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def generate(self, req: GenerationRequest) -> GenerationStream:
        """Submit ``req`` now and return a stream of its token ids (call from a running asyncio loop)."""
        prompt = self._validate(req)
        loop = asyncio.get_running_loop()
        stops = set(self.default_stop_ids() if req.stop_token_ids is None else req.stop_token_ids)
        if req.ignore_eos and self.eos_token_id is not None:
            stops.discard(self.eos_token_id)
        gen = None
        if req.temperature > 0:
            gen = torch.Generator()
            gen.manual_seed(req.seed if req.seed is not None else self._rng.getrandbits(63))
        seq = _Seq(req=req, prompt=prompt, stops=frozenset(stops), loop=loop, queue=asyncio.Queue(),
                   generator=gen, id=next(self._ids))
        with self._cond:
            if self._stopping:
                raise EngineStopped("engine is shut down")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                self._bump("requests_rejected")
                raise EngineOverloaded(f"{len(self._waiting)} requests waiting (max_waiting={self.max_waiting})")
            self._waiting.append(seq)
            self._bump("requests_total")
            self._cond.notify()
        return GenerationStream(self, seq)

    async def complete(self, req: GenerationRequest) -> list[int]:
        """Convenience: run ``req`` to the end and return its generated token ids."""
        return await self.generate(req).collect()

    def default_stop_ids(self) -> tuple[int, ...]:
        return () if self.eos_token_id is None else (int(self.eos_token_id),)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: totals since start, the batch-size histogram of decode steps, current load."""
        with self._stats_lock:
            c = dict(self._counters)
            hist = dict(self._bs_hist)
        with self._cond:
            running, waiting = len(self._running), len(self._waiting)
        cum, buckets = 0, {}
        for ub in BATCH_SIZE_BUCKETS:
            cum = sum(v for k, v in hist.items() if k <= ub)
            buckets[ub] = cum
        out = {k: c.get(k, 0) for k in (
            "requests_total", "requests_finished", "requests_cancelled", "requests_failed", "requests_rejected",
            "prompt_tokens_total", "generated_tokens_total", "steps_total", "prefill_steps_total",
            "batch_size_sum", "batch_size_count")}
        out.update(
            running=running,
            waiting=waiting,
            max_batch_size=self.max_batch_size,
            max_batch_size_seen=max(hist) if hist else 0,
            batch_size_hist=dict(sorted(hist.items())),
            batch_size_buckets=buckets,  # cumulative: steps with batch size <= bucket
            kv_cache_tokens=self._cache_cap,
            kv_cache_slots=self._slot_cap,
            dtype=self.dtype,
        )
        out["busy_seconds_total"] = c.get("busy_ns", 0) / 1e9
        return out

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still waiting or running end with `EngineStopped`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------------ internals: bookkeeping
    def _bump(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counters[key] += n

    def _validate(self, req: GenerationRequest) -> list[int]:
        prompt = [int(t) for t in req.prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids must not be empty")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if req.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if len(prompt) + req.max_new_tokens > self.max_context:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({req.max_new_tokens}) exceeds the context "
                f"({self.max_context} tokens)")
        if not (req.temperature >= 0 and math.isfinite(req.temperature)):
            raise ValueError("temperature must be a finite number >= 0")
        if not (0 < req.top_p <= 1):
            raise ValueError("top_p must be in (0, 1]")
        return prompt

    def _cancel(self, seq: _Seq) -> None:
        with self._cond:
            if not seq.done and not seq.cancelled:
                seq.cancelled = True
                self._cond.notify()

    def _post(self, seq: _Seq, item: Any) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            seq.cancelled = True

    def _finish(self, seq: _Seq, reason: str, error: BaseException | None = None) -> None:
        if seq.done:
            return
        seq.finish_reason = reason
        seq.done = True
        key = {"cancelled": "requests_cancelled", "error": "requests_failed"}.get(reason, "requests_finished")
        self._bump(key)
        self._post(seq, error if error is not None else _END)

    # ------------------------------------------------------------------ internals: the step loop
    def _loop(self) -> None:
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        try:
            with torch.inference_mode():
                while True:
                    new = self._next_work()
                    if new is None:
                        break
                    t0 = time.perf_counter_ns()
                    if self.mixed_prefill:
                        self._run_step(new)  # one forward pass: decode rows + new prompts
                    else:
                        if new:
                            self._run_step(new, decode=False)
                        if self._running:
                            self._run_step([])
                    self._bump("busy_ns", time.perf_counter_ns() - t0)
        except BaseException as e:  # pragma: no cover - defensive: never leave consumers hanging
            log.exception("generation engine loop died")
            with self._cond:
                self._stopping = True
            self._fail_all(EngineStopped(f"engine loop died: {e!r}"))
            return
        self._fail_all(EngineStopped("engine is shut down"))

    def _fail_all(self, err: BaseException) -> None:
        with self._cond:
            seqs = list(self._running) + list(self._waiting)
            self._running.clear()
            self._waiting.clear()
        for s in seqs:
            self._finish(s, "error", err)

    def _next_work(self) -> list[_Seq] | None:
        """Drop cancelled requests, then admit waiting ones into free slots. None means stop."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                for i in range(len(self._running) - 1, -1, -1):
                    if self._running[i].cancelled:
                        self._release(i, "cancelled")
                if any(s.cancelled for s in self._waiting):
                    keep = collections.deque()
                    for s in self._waiting:
                        if s.cancelled:
                            self._finish(s, "cancelled")
                        else:
                            keep.append(s)
                    self._waiting = keep
                if self._running or self._waiting:
                    break
                self._cond.wait()
            new: list[_Seq] = []
            longest = 0
            while self._waiting and len(self._running) + len(new) < self.max_batch_size:
                s = self._waiting[0]
                longest2 = max(longest, len(s.prompt))
                if new and longest2 * (len(new) + 1) > self.prefill_token_budget:
                    break
                longest = longest2
                new.append(self._waiting.popleft())
            return new

    def _release(self, i: int, reason: str | None = None, error: BaseException | None = None) -> None:
        """Remove running[i]; move the last running request into slot i so slots stay 0..n-1."""
        seq = self._running[i]
        last = len(self._running) - 1
        if i != last:
            moved = self._running[last]
            n = moved.pos
            if n:
                self._k[:, i, :, :n] = self._k[:, last, :, :n]
                self._v[:, i, :, :n] = self._v[:, last, :, :n]
            self._running[i] = moved
        self._running.pop()
        if reason is not None:
            self._finish(seq, reason, error)

    def _ensure_capacity(self, tokens: int, slots: int = 1) -> None:
        """Grow the KV cache (doubling) to hold ``tokens`` positions for ``slots`` requests; memory follows use
        (a large max_batch_size or max_context costs nothing until requests need it)."""
        if tokens <= self._cache_cap and slots <= self._slot_cap:
            return
        cap = max(16, self._cache_cap)
        while cap < tokens:
            cap *= 2
        cap = min(cap, self.max_context)
        nslots = max(1, self._slot_cap)
        while nslots < slots:
            nslots *= 2
        nslots = min(nslots, self.max_batch_size)
        w = self.w
        shape = (w.n_layer, nslots, w.n_head, cap, w.head_dim)
        k = torch.zeros(shape, dtype=self.cdt)
        v = torch.zeros(shape, dtype=self.cdt)
        if self._k is not None:
            k[:, : self._slot_cap, :, : self._cache_cap] = self._k
            v[:, : self._slot_cap, :, : self._cache_cap] = self._v
        self._k, self._v, self._cache_cap, self._slot_cap = k, v, cap, nslots

    def _emit(self, seqs: list[_Seq], tokens: list[int]) -> None:
        """Record each request's new token; finished requests leave the batch."""
        now = time.monotonic()
        finished: list[_Seq] = []
        emitted = 0
        for s, t in zip(seqs, tokens):
            if isinstance(t, BaseException):
                log.warning("request %s failed: %r", s.req.request_id or s.id, t)
                s.error = t
                finished.append(s)
                continue
            s.generated += 1
            s.last_token = t
            if s.first_token_time is None:
                s.first_token_time = now
            if t in s.stops:
                s.finish_reason = "stop"
                finished.append(s)
                continue
            s.emitted += 1
            emitted += 1
            self._post(s, t)
            if s.generated >= s.req.max_new_tokens or s.pos >= self.max_context:
                s.finish_reason = "length"
                finished.append(s)
        self._bump("generated_tokens_total", emitted)
        if finished:
            with self._cond:
                for s in finished:
                    reason = "error" if s.error is not None else s.finish_reason
                    s.finish_reason = None
                    self._release(self._running.index(s), reason, s.error)

    def _fail_step(self, seqs: list[_Seq], err: BaseException) -> None:
        log.exception("generation step failed for %d request(s)", len(seqs))
        with self._cond:
            for s in seqs:
                if s in self._running:
                    self._release(self._running.index(s), "error", err)

    def _run_step(self, new: list[_Seq], decode: bool = True) -> None:
        """One engine iteration: a decode token for every running request (unless ``decode`` is False) and the
        prefill of ``new`` ones, in ONE forward pass so the weights are read once; every request gets a token."""
        with self._cond:
            dec = list(self._running) if decode else []
            base = len(self._running)
            self._running.extend(new)
        seqs = dec + new
        if not seqs:
            return
        lens = [len(s.prompt) for s in new]
        try:
            self._ensure_capacity(max([s.pos + 1 for s in dec] + [n + 1 for n in lens]), base + len(new))
            logits = self._forward(len(dec), [s.last_token for s in dec], [s.pos for s in dec],
                                   [s.prompt for s in new], lens, base=base)
            for s in dec:
                s.pos += 1
            for s, n in zip(new, lens):
                s.pos = n
            n = len(seqs)
            with self._stats_lock:
                c = self._counters
                c["steps_total"] += 1
                c["batch_size_sum"] += n
                c["batch_size_count"] += 1
                self._bs_hist[n] += 1
                if new:
                    c["prefill_steps_total"] += 1
                    c["prompt_tokens_total"] += sum(lens)
            tokens = self._sample(seqs, logits)
        except Exception as e:  # one bad batch must not kill the loop
            self._fail_step(seqs, e)
            return
        self._emit(seqs, tokens)

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> list[Any]:
        """Greedy rows by one batched argmax; sampled rows one by one with their own generator.

        A row whose sampling fails gets the exception instead of a token (that request alone ends with it)."""
        out = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(seqs):
            req = s.req
            if req.temperature <= 0:
                continue
            try:
                row = logits[i].float() / req.temperature
                probs = torch.softmax(row, dim=-1)
                if req.top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    cum = torch.cumsum(sp, dim=-1)
                    keep = (cum - sp) < req.top_p  # always keeps the most likely token
                    sp = sp * keep
                    choice = torch.multinomial(sp, 1, generator=s.generator)
                    out[i] = int(si[choice])
                else:
                    out[i] = int(torch.multinomial(probs, 1, generator=s.generator))
            except Exception as e:  # this request alone fails (e.g. inf/nan probabilities)
                out[i] = e
        return out

    # ------------------------------------------------------------------ internals: the GPT-2 forward pass
    def _mlp_and_proj(self, x: torch.Tensor, o: torch.Tensor, L: dict) -> torch.Tensor:
        cdt, E, eps = self.cdt, self.w.n_embd, self.w.eps
        x = x + L["proj"](o.to(cdt)).float()
        h = F.layer_norm(x, (E,), *L["ln2"], eps).to(cdt)
        return x + L["mp"](L["fc"](h, gelu=True)).float()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        h = F.layer_norm(x, (w.n_embd,), *w.ln_f, w.eps).to(self.cdt)
        return w.lm_head(h).float()

    def _prefill(self, base: int, prompts: list[list[int]], lens: list[int]) -> torch.Tensor:
        """Prefill only, into slots base..base+b-1; last-position logits [b, V]."""
        self._ensure_capacity(max(lens) + 1, base + len(prompts))
        return self._forward(0, [], [], prompts, lens, base=base)

    def _decode(self, n: int, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Decode only, slots 0..n-1; logits [n, V]."""
        self._ensure_capacity(max(positions) + 1, n)
        return self._forward(n, tokens, positions, [], [])

    def _forward(self, nd: int, tokens: list[int], positions: list[int], prompts: list[list[int]],
                 lens: list[int], base: int | None = None) -> torch.Tensor:
        """One GPT-2 forward pass over ``nd`` decode rows (slots 0..nd-1: ``tokens`` at ``positions``) and the
        right-padded ``prompts`` (slots base..base+b-1, base defaults to nd). The rows of both share every matmul;
        attention runs per part on the KV cache. Returns logits [nd + b, V]: decode rows, then each prompt's
        last position."""
        w, cdt = self.w, self.cdt
        E, H, D = w.n_embd, w.n_head, w.head_dim
        b = len(prompts)
        base = nd if base is None else base
        xs = []
        if nd:
            tok = torch.tensor(tokens, dtype=torch.long)
            pos = torch.tensor(positions, dtype=torch.long)
            Td = max(positions) + 1
            # rows of the cache viewed as [slots*heads*capacity, head_dim] that this step writes (index_copy_ is
            # ~2x cheaper than advanced-index assignment here)
            cap = self._cache_cap
            widx = ((torch.arange(nd)[:, None] * H + torch.arange(H)[None, :]) * cap + pos[:, None]).reshape(-1)
            valid = torch.arange(Td)[None, :] <= pos[:, None]  # [nd, Td]
            if self.attention == "sdpa":
                dmask = valid[:, None, None, :]
            else:
                dmask = torch.zeros((nd, 1, 1, Td), dtype=cdt).masked_fill_(~valid[:, None, None, :], float("-inf"))
            xs.append(w.wte[tok] + w.wpe[pos])
        if b:
            Tp = max(lens)
            ids = torch.zeros((b, Tp), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            lens_t = torch.tensor(lens, dtype=torch.long)
            ar = torch.arange(Tp)
            # query i sees keys j <= i that are real tokens (j < len); key 0 is always visible -> no empty rows
            pmask = ((ar[None, :] <= ar[:, None])[None] & (ar[None, None, :] < lens_t[:, None, None]))[:, None]
            xs.append((w.wte[ids] + w.wpe[:Tp]).reshape(b * Tp, E))
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        for li, L in enumerate(w.layers):
            h = F.layer_norm(x, (E,), *L["ln1"], w.eps).to(cdt)
            qkv = L["attn"](h)  # [rows, 3E]
            kc, vc = self._k[li], self._v[li]
            outs = []
            if nd:
                q, k, v = qkv[:nd].view(nd, 3, H, D).unbind(1)  # [nd, H, D]
                kc.view(-1, D).index_copy_(0, widx, k.reshape(nd * H, D))
                vc.view(-1, D).index_copy_(0, widx, v.reshape(nd * H, D))
                K, V = kc[:nd, :, :Td], vc[:nd, :, :Td]  # views of the cache, no copy
                q = q.unsqueeze(2)  # [nd, H, 1, D]
                if self.attention == "sdpa":
                    o = F.scaled_dot_product_attention(q, K, V, attn_mask=dmask, scale=L["scale"])
                else:
                    att = torch.matmul(q, K.transpose(-1, -2)) * L["scale"] + dmask
                    o = torch.matmul(torch.softmax(att, dim=-1), V)
                outs.append(o.reshape(nd, E))
            if b:
                q, k, v = qkv[nd:].view(b, Tp, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # [b, H, Tp, D]
                kc[base : base + b, :, :Tp] = k
                vc[base : base + b, :, :Tp] = v
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=pmask, scale=L["scale"])
                outs.append(o.transpose(1, 2).reshape(b * Tp, E))
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = self._mlp_and_proj(x, o, L)
        if b:
            last = x[nd:].view(b, Tp, E)[torch.arange(b), lens_t - 1]
            x = last if not nd else torch.cat([x[:nd], last])
        return self._logits(x)

    def _warmup(self) -> None:
        with torch.inference_mode():
            for b in sorted({1, min(2, self.max_batch_size)}):
                self._prefill(0, [[0, 1, 2, 3]] * b, [4] * b)
                self._decode(b, [4] * b, [4] * b)
            if self.max_batch_size >= 2:
                self._forward(1, [4], [4], [[0, 1, 2, 3]], [4])
