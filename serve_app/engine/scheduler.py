"""Iteration-level scheduling, pure Python (no torch): which requests run in the next step, in which KV-cache
slots, and what each sampled token means for its request.

Running requests always occupy slots ``0..n-1`` (index in ``running`` == slot): a finished request's slot is
refilled by moving the last running request into it, so every step works on plain slices of the cache. The
scheduler only *plans* those moves (`SlotMove`); the engine applies them to the cache before the next step,
outside any lock the event loop takes.

Not thread-safe by itself: the engine calls it under its own lock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable, Optional

from serve_app.engine.request import EngineOverloaded, Sequence


@dataclass(frozen=True)
class SlotMove:
    """Copy the first ``tokens`` cache positions of slot ``src`` into slot ``dst``."""

    src: int
    dst: int
    tokens: int


@dataclass
class StepPlan:
    """One forward pass: ``decode`` requests feed their last token (slots 0..len-1), ``prefill`` requests feed their
    prompt (slots base..base+len-1). ``moves`` must be applied to the KV cache before the pass."""

    decode: list[Sequence]
    prefill: list[Sequence]
    base: int
    moves: list[SlotMove] = field(default_factory=list)

    @property
    def rows(self) -> list[Sequence]:
        return self.decode + self.prefill


@dataclass(frozen=True)
class Event:
    """What a step means for one request: ``token`` to stream, or the end (``finish`` reason, maybe ``error``)."""

    seq: Sequence
    token: Optional[int] = None
    finish: Optional[str] = None  # "stop" | "length" | "cancelled" | "error"
    error: Optional[BaseException] = None


class Scheduler:
    def __init__(self, *, max_batch_size: int, max_context: int, max_waiting: Optional[int] = None,
                 prefill_token_budget: int = 4096):
        self.max_batch_size = max_batch_size
        self.max_context = max_context
        self.max_waiting = max_waiting
        self.prefill_token_budget = prefill_token_budget
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # index == KV-cache slot
        self._moves: list[SlotMove] = []  # planned by releases, handed out with the next plan

    # ------------------------------------------------------------------ intake
    def add(self, seq: Sequence) -> None:
        if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            raise EngineOverloaded(f"{len(self.waiting)} requests waiting (max_waiting={self.max_waiting})")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # ------------------------------------------------------------------ planning
    def drop_cancelled(self) -> list[Event]:
        """Take cancelled requests out of the batch and the queue."""
        events = []
        for i in range(len(self.running) - 1, -1, -1):
            if self.running[i].cancelled:
                events.append(self._release(i, "cancelled"))
        if any(s.cancelled for s in self.waiting):
            keep = collections.deque()
            for s in self.waiting:
                if s.cancelled:
                    events.append(Event(s, finish="cancelled"))
                else:
                    keep.append(s)
            self.waiting = keep
        return events

    def schedule(self) -> StepPlan:
        """Admit waiting requests into free slots (within the prefill-token budget; at least one) and plan
        the step: every running request decodes, the admitted ones prefill."""
        new: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) + len(new) < self.max_batch_size:
            tokens += len(self.waiting[0].prompt)
            if new and tokens > self.prefill_token_budget:
                break
            new.append(self.waiting.popleft())
        plan = StepPlan(decode=list(self.running), prefill=new, base=len(self.running), moves=self._moves)
        self._moves = []
        self.running.extend(new)
        return plan

    def schedule_decode(self) -> StepPlan:
        """A decode-only step for every running request (after a prefill pass of its own)."""
        plan = StepPlan(decode=list(self.running), prefill=[], base=len(self.running), moves=self._moves)
        self._moves = []
        return plan

    # ------------------------------------------------------------------ results
    def commit(self, plan: StepPlan, tokens: Iterable[object]) -> list[Event]:
        """Consume the step's sampled tokens (one per row of ``plan``; an exception fails that row's request):
        advance positions, stream tokens, end requests on a stop token, max_new_tokens or the context limit."""
        for s in plan.decode:
            s.pos += 1
        for s in plan.prefill:
            s.pos = len(s.prompt)
        events: list[Event] = []
        ended: list[tuple[Sequence, str, Optional[BaseException]]] = []
        for s, t in zip(plan.rows, tokens):
            if isinstance(t, BaseException):
                ended.append((s, "error", t))
                continue
            s.generated += 1
            s.last_token = t
            if t in s.stops:
                ended.append((s, "stop", None))
                continue
            s.emitted += 1
            events.append(Event(s, token=t))
            if s.generated >= s.req.max_new_tokens or s.pos >= self.max_context:
                ended.append((s, "length", None))
        for s, reason, err in ended:
            events.append(self._release(self.running.index(s), reason, err))
        return events

    def fail(self, seqs: Iterable[Sequence], err: BaseException) -> list[Event]:
        """End ``seqs`` (a failed step) with ``err``; the others keep running."""
        return [self._release(self.running.index(s), "error", err) for s in seqs if s in self.running]

    def drain(self) -> list[Sequence]:
        """Every request still waiting or running (for shutdown), removed from the scheduler."""
        seqs = list(self.running) + list(self.waiting)
        self.running.clear()
        self.waiting.clear()
        self._moves.clear()
        return seqs

    def _release(self, i: int, reason: str, error: Optional[BaseException] = None) -> Event:
        """Remove running[i]; the last running request moves into slot i so slots stay 0..n-1."""
        seq = self.running[i]
        last = len(self.running) - 1
        if i != last:
            moved = self.running[last]
            if moved.pos:
                self._moves.append(SlotMove(src=last, dst=i, tokens=moved.pos))
            self.running[i] = moved
        self.running.pop()
        if not self.running:
            # Nothing left to keep: planned moves would copy finished rows, and the engine may shrink the cache when
            # idle (kv_cache.release), after which they would point past its slots.
            self._moves.clear()
        return Event(seq, finish=reason, error=error)
