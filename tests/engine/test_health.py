"""The engine's health signal (a stuck step is visible) and its memory bound (the KV cache never outgrows
max_batch_size x max_context, what the operator's memory admission assumes). No Ray."""

from __future__ import annotations

import asyncio
import threading

from tests.engine.engine_testlib import greedy, make_model
from tests.support import wait_for_async


def test_a_stuck_step_makes_the_engine_unhealthy_until_it_ends(tiny_model, make_engine):
    """A forward pass that blocks (a real forward hook on the real model) leaves the thread alive but the engine
    unhealthy, which is what the replica's check_health reports to Serve."""
    model = make_model()
    release, entered = threading.Event(), threading.Event()

    def block(_module, _inputs):
        entered.set()
        assert release.wait(30), "the test never released the stuck step"

    hook = model.transformer.register_forward_pre_hook(block)
    engine = make_engine(model, max_batch_size=2, runner="transformers", warmup=False)
    assert engine.healthy(max_step_s=0.2)

    async def main():
        stream = engine.generate(greedy([1, 2, 3], 3))
        await wait_for_async(entered.is_set)
        await wait_for_async(lambda: engine.step_age_s > 0.3)
        stuck = (engine.alive, engine.healthy(max_step_s=0.2), engine.healthy(max_step_s=600))
        hook.remove()
        release.set()
        return stuck, await stream.collect()

    (alive, healthy_short, healthy_long), tokens = asyncio.run(main())
    assert alive and not healthy_short and healthy_long
    assert len(tokens) == 3
    assert engine.healthy(max_step_s=0.2)


def test_kv_cache_is_bounded_by_batch_and_context(make_engine):
    """However many requests pass through, the cache holds at most max_batch_size slots of max_context tokens."""
    model = make_model(n_positions=128)
    engine = make_engine(model, max_batch_size=3, initial_cache_tokens=16)

    async def main():
        prompts = [[i + 1] * (20 + 7 * i) for i in range(9)]
        return await asyncio.gather(*[engine.complete(greedy(p, 128 - len(p), ignore_eos=True)) for p in prompts])

    outs = asyncio.run(main())
    assert all(outs)
    st = engine.stats()
    assert st["max_batch_size_seen"] == 3
    assert st["kv_cache_slots"] <= 3 and st["kv_cache_tokens"] <= 128
    cache = engine.runner.cache
    per_token = 2 * model.config.n_layer * model.config.n_embd * cache.k.element_size()
    assert cache.nbytes <= 3 * 128 * per_token


def test_health_is_false_once_stopped(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=1)
    assert engine.healthy(max_step_s=60)
    engine.shutdown()
    assert not engine.healthy(max_step_s=60)
