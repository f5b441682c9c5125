"""The scheduler alone: pure Python, no model, no thread (serve_app.engine.scheduler)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.engine.request import EngineOverloaded, GenerationRequest, Sequence
from serve_app.engine.scheduler import Scheduler, SlotMove

_ids = iter(range(1, 10_000))


def seq(prompt_len: int = 3, max_new: int = 5, stops=()) -> Sequence:
    req = GenerationRequest(prompt_ids=[1] * prompt_len, max_new_tokens=max_new, temperature=0)
    return Sequence(req=req, prompt=list(req.prompt_ids), stops=frozenset(stops), loop=None,
                    queue=asyncio.Queue(), generator=None, id=next(_ids))


def sched(**kw) -> Scheduler:
    kw.setdefault("max_batch_size", 4)
    kw.setdefault("max_context", 64)
    return Scheduler(**kw)


def test_admits_up_to_the_batch_size_and_keeps_slots_in_order():
    s = sched(max_batch_size=2)
    a, b, c = seq(), seq(), seq()
    for x in (a, b, c):
        s.add(x)
    plan = s.schedule()
    assert plan.decode == [] and plan.prefill == [a, b] and plan.base == 0
    assert s.running == [a, b] and list(s.waiting) == [c]
    s.commit(plan, [7, 8])
    assert (a.pos, a.last_token, b.pos) == (3, 7, 3)
    plan = s.schedule()  # full: c keeps waiting, both decode
    assert plan.decode == [a, b] and plan.prefill == []


def test_prefill_budget_limits_admission_but_admits_one():
    s = sched(max_batch_size=8, prefill_token_budget=10)
    big, small1, small2, small3 = seq(prompt_len=30), seq(prompt_len=4), seq(prompt_len=5), seq(prompt_len=2)
    for x in (big, small1, small2, small3):
        s.add(x)
    assert s.schedule().prefill == [big]  # over budget alone, still admitted
    assert s.schedule().prefill == [small1, small2]  # 4 + 5 prompt tokens <= 10 (prompts are packed, not padded)
    assert s.schedule().prefill == [small3]  # 4 + 5 + 2 would be 11


def test_finished_request_frees_its_slot_by_moving_the_last_one_in():
    s = sched()
    a, b, c = seq(max_new=1), seq(), seq()
    for x in (a, b, c):
        s.add(x)
    plan = s.schedule()
    events = s.commit(plan, [5, 6, 7])
    assert [(e.seq, e.finish) for e in events if e.finish] == [(a, "length")]
    assert s.running == [c, b]  # c moved from slot 2 into slot 0
    nxt = s.schedule()
    assert nxt.moves == [SlotMove(src=2, dst=0, tokens=3)] and nxt.decode == [c, b]
    assert s.schedule().moves == []  # handed out once


def test_no_move_outlives_the_last_running_request():
    """A step that ends every request leaves no move behind: the idle engine shrinks the KV cache to two slots, and
    a stale move from slot 2 then failed the next step (IndexError; found by make e2e-day2 under load)."""
    s = sched()
    a, b, c = seq(max_new=1), seq(max_new=1), seq(max_new=1)
    for x in (a, b, c):
        s.add(x)
    events = s.commit(s.schedule(), [5, 6, 7])
    assert {e.seq for e in events if e.finish} == {a, b, c} and s.running == []
    d = seq()
    s.add(d)
    assert s.schedule().moves == []


def test_stop_token_ends_without_streaming_it_and_errors_end_one_row():
    s = sched()
    a, b = seq(stops={9}), seq()
    s.add(a), s.add(b)
    plan = s.schedule()
    boom = ValueError("bad row")
    events = s.commit(plan, [9, boom])
    assert [(e.seq, e.token, e.finish) for e in events] == [(a, None, "stop"), (b, None, "error")]
    assert events[1].error is boom and s.running == [] and a.emitted == 0


def test_context_limit_ends_a_request():
    s = sched(max_context=5)
    a = seq(prompt_len=4, max_new=50)
    s.add(a)
    events = s.commit(s.schedule(), [1])  # pos 4
    assert [e.token for e in events] == [1]
    events = s.commit(s.schedule(), [2])  # pos 5 == max_context
    assert [(e.token, e.finish) for e in events] == [(2, None), (None, "length")]


def test_cancelled_requests_leave_queue_and_batch():
    s = sched()
    a, b, c = seq(), seq(), seq()
    s.add(a), s.add(b)
    s.commit(s.schedule(), [1, 2])
    s.add(c)
    a.cancelled = c.cancelled = True
    events = s.drop_cancelled()
    assert {(e.seq.id, e.finish) for e in events} == {(a.id, "cancelled"), (c.id, "cancelled")}
    assert s.running == [b] and not s.waiting
    assert s.schedule().moves == [SlotMove(src=1, dst=0, tokens=3)]


def test_queue_bound_raises_overloaded():
    s = sched(max_waiting=1)
    s.add(seq())
    with pytest.raises(EngineOverloaded):
        s.add(seq())
