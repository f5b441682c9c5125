"""`GenerationEngine`: the step loop in a background thread, and the asyncio side (`generate` -> stream).

Each iteration: drop cancelled requests, admit waiting ones (`Scheduler`), apply the planned KV-cache slot moves,
run ONE forward pass for every running request plus the new prompts (`ModelRunner`), sample (`sampler`), and hand
the tokens to the asyncio consumers through per-request ``asyncio.Queue``s, fed by one ``loop.call_soon_threadsafe``
per event loop per step.
The lock that ``generate()`` takes on the event loop only guards the scheduler's lists: no tensor work under it.
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
from typing import Any, AsyncIterator

import torch

from serve_app.engine.dtypes import resolve_dtype
from serve_app.engine.model_runner import ModelRunner, StepInputs, TransformersRunner
from serve_app.engine.request import EngineStopped, GenerationRequest, Sequence
from serve_app.engine.sampler import sample
from serve_app.engine.scheduler import Event, Scheduler, StepPlan

log = logging.getLogger(__name__)

# Upper bounds of the batch-size histogram buckets (Prometheus style, cumulative counts in stats()).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
_END = object()  # end-of-stream sentinel put on a request's queue
_COUNTERS = ("requests_total", "requests_finished", "requests_cancelled", "requests_failed", "requests_rejected",
             "prompt_tokens_total", "generated_tokens_total", "steps_total", "prefill_steps_total",
             "batch_size_sum", "batch_size_count")


class GenerationStream:
    """What `GenerationEngine.generate` returns: an async iterator of token ids plus the request's outcome.

    After iteration ends: ``finish_reason`` is ``"stop"`` (a stop token), ``"length"`` (max_new_tokens), or
    ``"cancelled"``; ``prompt_tokens`` / ``completion_tokens`` count tokens. Leaving the loop early (break,
    task cancelled, client disconnect) cancels the request and frees its slot.
    """

    def __init__(self, engine: "GenerationEngine", seq: Sequence):
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
                self._engine.cancel(seq)

    def __aiter__(self) -> AsyncIterator[int]:
        return self._agen

    def __anext__(self):
        return self._agen.__anext__()

    async def aclose(self) -> None:
        await self._agen.aclose()

    def cancel(self) -> None:
        """Cancel the request (thread-safe); the stream then ends with finish_reason 'cancelled'."""
        self._engine.cancel(self._seq)

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


def make_runner(model: torch.nn.Module, runner: str, dtype: str, max_slots: int, max_context: int,
                **runner_kw: Any) -> ModelRunner:
    if runner == "gpt2":
        from serve_app.engine.gpt2_runner import GPT2Runner

        return GPT2Runner(model, dtype=dtype, max_slots=max_slots, max_context=max_context, **runner_kw)
    if runner == "transformers":
        if dtype != "float32":
            raise ValueError("the transformers runner runs float32 only")
        return TransformersRunner(model, max_context=max_context)
    raise ValueError(f"runner must be 'gpt2' or 'transformers', got {runner!r}")


class GenerationEngine:
    """Continuous-batching generation on CPU.

    Parameters: ``max_batch_size`` running requests (KV-cache slots); ``max_context`` tokens per request
    (prompt + new tokens, at most the model's n_positions); ``dtype`` "float32" (default, exact), "bfloat16" or
    "auto" (bfloat16 only on CPUs with native bf16); ``max_waiting`` bounds the queue of requests not yet running
    (None = unbounded; beyond it ``generate`` raises `EngineOverloaded`); ``num_threads`` sets torch's intra-op
    threads in the engine thread (None = leave as is); ``prefill_token_budget`` caps the prompt tokens
    prefilled in one iteration (at least one request is always admitted); ``mixed_prefill`` prefills new
    requests inside the decode step's pass (True) or in a pass of their own; ``runner`` "gpt2" (ours) or
    "transformers" (the stock model, for A/B); ``warmup`` runs tiny passes at start so the first request does
    not pay kernel set-up; ``cache_idle_release_s``: after this long with no request, the KV cache goes back to its
    starting size. Other keywords (``attention``, ``initial_cache_tokens``) go to the GPT-2 runner.
    """

    def __init__(self, model: torch.nn.Module, *, max_batch_size: int = 16, max_context: int = 1024,
                 dtype: str = "float32", max_waiting: int | None = None, num_threads: int | None = None,
                 prefill_token_budget: int = 4096, mixed_prefill: bool = True, runner: str = "gpt2",
                 warmup: bool = True, name: str = "gpt2-engine", cache_idle_release_s: float = 10.0,
                 **runner_kw: Any):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.dtype = resolve_dtype(dtype)
        self.max_batch_size = int(max_batch_size)
        self.num_threads = num_threads
        self.mixed_prefill = bool(mixed_prefill)
        self.runner = make_runner(model, runner, self.dtype, self.max_batch_size, max_context, **runner_kw)
        self.max_context = self.runner.max_context
        self.vocab_size = self.runner.vocab_size
        self.eos_token_id = self.runner.eos_token_id
        self.scheduler = Scheduler(max_batch_size=self.max_batch_size, max_context=self.max_context,
                                   max_waiting=max_waiting, prefill_token_budget=int(prefill_token_budget))
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._cache_in_use = False  # the runner may hold KV cache grown by earlier requests (engine thread only)
        self.cache_idle_release_s = float(cache_idle_release_s)
        self._stats_lock = threading.Lock()
        self._counters: collections.Counter = collections.Counter()
        self._bs_hist: collections.Counter = collections.Counter()  # batch size -> steps
        self._rng = random.Random()
        self._step_started: float | None = None  # monotonic start of the step in progress (None between steps)
        if warmup and hasattr(self.runner, "warmup"):
            self.runner.warmup(self.max_batch_size)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def generate(self, req: GenerationRequest) -> GenerationStream:
        """Submit ``req`` now and return a stream of its token ids (call from a running asyncio loop)."""
        prompt = self._validate(req)
        stops = set(self.default_stop_ids() if req.stop_token_ids is None else req.stop_token_ids)
        if req.ignore_eos and self.eos_token_id is not None:
            stops.discard(self.eos_token_id)
        gen = None
        if req.temperature > 0:
            gen = torch.Generator()
            gen.manual_seed(req.seed if req.seed is not None else self._rng.getrandbits(63))
        seq = Sequence(req=req, prompt=prompt, stops=frozenset(stops), loop=asyncio.get_running_loop(),
                       queue=asyncio.Queue(), generator=gen, id=next(self._ids))
        with self._cond:
            if self._stopping:
                raise EngineStopped("engine is shut down")
            try:
                self.scheduler.add(seq)
            except Exception:
                self._bump("requests_rejected")
                raise
            self._bump("requests_total")
            self._cond.notify()
        return GenerationStream(self, seq)

    async def complete(self, req: GenerationRequest) -> list[int]:
        """Convenience: run ``req`` to the end and return its generated token ids."""
        return await self.generate(req).collect()

    def cancel(self, seq: Sequence) -> None:
        """Mark ``seq`` cancelled (thread-safe); the loop frees its slot at the next iteration."""
        with self._cond:
            if not seq.done and not seq.cancelled:
                seq.cancelled = True
                self._cond.notify()

    def default_stop_ids(self) -> tuple[int, ...]:
        return () if self.eos_token_id is None else (int(self.eos_token_id),)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: totals since start, the batch-size histogram of steps, current load."""
        with self._stats_lock:
            c = dict(self._counters)
            hist = dict(self._bs_hist)
        with self._cond:
            running, waiting = len(self.scheduler.running), len(self.scheduler.waiting)
        buckets = {ub: sum(v for k, v in hist.items() if k <= ub) for ub in BATCH_SIZE_BUCKETS}
        out = {k: c.get(k, 0) for k in _COUNTERS}
        out.update(running=running, waiting=waiting, max_batch_size=self.max_batch_size,
                   max_batch_size_seen=max(hist) if hist else 0, batch_size_hist=dict(sorted(hist.items())),
                   batch_size_buckets=buckets,  # cumulative: steps with batch size <= bucket
                   dtype=self.dtype, busy_seconds_total=c.get("busy_ns", 0) / 1e9, **self.runner.cache_info())
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

    @property
    def step_age_s(self) -> float:
        """Seconds the step in progress has been running (0 between steps)."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    def healthy(self, max_step_s: float) -> bool:
        """Alive, and no step has been running longer than ``max_step_s``: a stuck forward pass makes this False
        while the thread still exists (so a health check can get the replica replaced)."""
        return self.alive and self.step_age_s <= max_step_s

    # ------------------------------------------------------------------ bookkeeping
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

    @staticmethod
    def _put_all(items: list[tuple[Sequence, Any]]) -> None:
        for seq, item in items:  # on the consumers' event loop
            seq.queue.put_nowait(item)

    def _send(self, outbox: dict) -> None:
        """One wake-up per event loop per step, not one per token: each call_soon_threadsafe writes the loop's
        self-pipe, and the woken loop competes for the cores with the step's compute threads."""
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(self._put_all, items)
            except RuntimeError:  # the consumers' loop is closed: nobody is listening any more
                for seq, _ in items:
                    seq.cancelled = True

    def _deliver(self, events: list[Event]) -> None:
        """Stream tokens and end finished requests (outside the lock)."""
        now = time.monotonic()
        emitted = 0
        outbox: dict = {}  # event loop -> [(sequence, token | error | end)]
        for ev in events:
            s = ev.seq
            if ev.token is not None:
                if s.first_token_time is None:
                    s.first_token_time = now
                emitted += 1
                outbox.setdefault(s.loop, []).append((s, ev.token))
                continue
            if s.done:
                continue
            if ev.error is not None:
                log.warning("request %s failed: %r", s.label, ev.error)
            if s.first_token_time is None and ev.finish == "stop":
                s.first_token_time = now
            s.finish_reason, s.done = ev.finish, True
            self._bump({"cancelled": "requests_cancelled", "error": "requests_failed"}.get(ev.finish,
                                                                                          "requests_finished"))
            outbox.setdefault(s.loop, []).append((s, ev.error if ev.error is not None else _END))
        self._send(outbox)
        if emitted:
            self._bump("generated_tokens_total", emitted)

    # ------------------------------------------------------------------ the step loop
    def _loop(self) -> None:
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        try:
            with torch.inference_mode():
                while True:
                    plan = self._next_plan()
                    if plan is None:
                        break
                    t0 = time.perf_counter_ns()
                    self._step_started = time.monotonic()
                    if self.mixed_prefill or not plan.prefill:
                        self._run(plan)  # one forward pass: decode rows + new prompts
                    else:  # new prompts in a pass of their own, then every running request decodes
                        self._run(StepPlan(decode=[], prefill=plan.prefill, base=plan.base, moves=plan.moves))
                        with self._cond:
                            decode = self.scheduler.schedule_decode()
                        self._run(decode)
                    self._step_started = None
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
            seqs = self.scheduler.drain()
        self._deliver([Event(s, finish="error", error=err) for s in seqs])

    def _next_plan(self) -> StepPlan | None:
        """Wait for work; drop cancelled requests and admit waiting ones. None means stop."""
        idle_since: float | None = None
        with self._cond:
            while True:
                if self._stopping:
                    return None
                dropped = self.scheduler.drop_cancelled()
                if self.scheduler.has_work() or dropped:  # dropped ones are told they ended, below
                    break
                if not self._cache_in_use:
                    self._cond.wait()
                    continue
                # Idle: after cache_idle_release_s without work the KV cache a burst grew is given back (not at
                # every short gap between requests, which would re-grow it, copying, at the next one).
                idle_since = idle_since if idle_since is not None else time.monotonic()
                left = idle_since + self.cache_idle_release_s - time.monotonic()
                if left > 0:
                    self._cond.wait(timeout=left)
                else:
                    self.runner.release_cache()
                    self._cache_in_use = False
            self._cache_in_use = True
            plan = self.scheduler.schedule()
        self._deliver(dropped)
        return plan

    def _run(self, plan: StepPlan) -> None:
        """One forward pass for ``plan``; every row gets a token (or its request fails)."""
        for m in plan.moves:  # slot compaction planned by the scheduler, applied outside the lock
            self.runner.move_slot(m.src, m.dst, m.tokens)
        rows = plan.rows
        if not rows:
            return
        try:
            logits = self.runner.forward(StepInputs(
                decode_tokens=[s.last_token for s in plan.decode], decode_positions=[s.pos for s in plan.decode],
                prompts=[s.prompt for s in plan.prefill], base=plan.base))
            tokens = sample(logits, [(s.req.temperature, s.req.top_p, s.generator) for s in rows])
        except Exception as e:  # one bad batch must not kill the loop
            log.exception("generation step failed for %d request(s)", len(rows))
            with self._cond:
                events = self.scheduler.fail(rows, e)
            self._deliver(events)
            return
        with self._stats_lock:
            c = self._counters
            c["steps_total"] += 1
            c["batch_size_sum"] += len(rows)
            c["batch_size_count"] += 1
            self._bs_hist[len(rows)] += 1
            if plan.prefill:
                c["prefill_steps_total"] += 1
                c["prompt_tokens_total"] += sum(len(s.prompt) for s in plan.prefill)
        with self._cond:
            events = self.scheduler.commit(plan, tokens)
        self._deliver(events)
