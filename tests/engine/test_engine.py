"""GenerationEngine behaviour against Hugging Face's own generate, on the same random weights (no Ray)."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from serve_app.engine import (
    EngineOverloaded,
    EngineStopped,
    GenerationEngine,
    GenerationRequest,
    native_bf16,
    resolve_dtype,
)
from tests.engine.engine_testlib import greedy, greedy_all, hf_greedy, make_model
from tests.support import wait_for_async

PROMPTS = [[1, 2, 3], [7, 8, 9, 10, 11, 12], [500], [42, 17, 256, 3, 3, 911, 64, 5, 80, 13, 2, 700, 1]]


def test_greedy_matches_hf_generate_alone(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=4)

    async def main():
        outs = []
        for p in PROMPTS:
            outs.append(await engine.complete(greedy(p, 40)))
        return outs

    outs = asyncio.run(main())
    for p, out in zip(PROMPTS, outs):
        ref = hf_greedy(tiny_model, p, 40)
        assert out == ref, f"prompt {p}"
    assert any(len(set(o)) > 5 for o in outs)  # outputs depend on context, not one repeated token


@pytest.mark.parametrize("mixed_prefill", [True, False])
def test_concurrent_requests_join_and_leave_match_alone(tiny_model, make_engine, mixed_prefill):
    """Different prompt lengths, budgets and arrival times share decode steps; each gets its solo tokens."""
    # fewer slots than requests: some wait, then join
    engine = make_engine(tiny_model, max_batch_size=3, mixed_prefill=mixed_prefill)
    rng = random.Random(7)
    jobs = [(p, n) for p in PROMPTS for n in (5, 23)]
    rng.shuffle(jobs)

    async def one(i, p, n):
        await asyncio.sleep(0.002 * i)
        return await engine.complete(greedy(p, n))

    async def main():
        return await asyncio.gather(*[one(i, p, n) for i, (p, n) in enumerate(jobs)])

    outs = asyncio.run(main())
    for (p, n), out in zip(jobs, outs):
        assert out == hf_greedy(tiny_model, p, n), f"prompt {p} n={n}"
    st = engine.stats()
    assert st["max_batch_size_seen"] > 1
    assert st["batch_size_sum"] > st["batch_size_count"]  # mean batch size > 1
    assert st["max_batch_size_seen"] <= 3
    assert st["requests_finished"] == len(jobs)
    assert st["generated_tokens_total"] == sum(len(o) for o in outs)
    assert st["running"] == 0 and st["waiting"] == 0


def test_mid_size_model_matches_hf(make_engine):
    """A GPT-2 with the real vocabulary and width (4 layers), long prompt crossing a KV-cache growth."""
    model = make_model(seed=1, n_layer=4, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                       bos_token_id=50256, eos_token_id=50256, initializer_range=0.1)
    engine = make_engine(model, max_batch_size=4, initial_cache_tokens=32)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 50256, (n,), generator=g).tolist() for n in (5, 29, 40)]

    async def main():
        return await asyncio.gather(*[engine.complete(greedy(p, 12)) for p in prompts])

    outs = asyncio.run(main())
    for p, out in zip(prompts, outs):
        assert out == hf_greedy(model, p, 12)
    assert engine.stats()["kv_cache_peak_tokens"] >= 52  # grew from 32


def test_seed_makes_sampling_reproducible(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=4)

    def req(seed):
        return GenerationRequest(PROMPTS[1], 30, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)

    async def main():
        alone = await engine.complete(req(123))
        crowd = await asyncio.gather(engine.complete(req(123)), engine.complete(req(5)),
                                     engine.complete(greedy(PROMPTS[0], 30)), engine.complete(req(123)))
        return alone, crowd

    alone, crowd = asyncio.run(main())
    assert len(alone) == 30
    assert crowd[0] == alone and crowd[3] == alone  # same seed, same tokens, alone or batched
    assert crowd[1] != alone  # another seed samples something else
    assert alone != hf_greedy(tiny_model, PROMPTS[1], 30)  # it really sampled


def test_stop_token_ends_request(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=2)
    ref = hf_greedy(tiny_model, PROMPTS[3], 30)
    stop = ref[4]
    cut = ref.index(stop)

    async def main():
        stream = engine.generate(greedy(PROMPTS[3], 30, stop_token_ids=(stop,)))
        toks = [t async for t in stream]
        full = engine.generate(greedy(PROMPTS[3], 30, stop_token_ids=()))
        return toks, stream.finish_reason, await full.collect(), full.finish_reason

    toks, reason, full, full_reason = asyncio.run(main())
    assert toks == ref[:cut] and reason == "stop"  # the stop token itself is not yielded
    assert full == ref[:30] and full_reason == "length"


def test_eos_stops_unless_ignored(make_engine):
    # find a tiny model + prompt whose greedy continuation hits EOS
    for seed in range(40):
        model = make_model(seed=seed, vocab_size=50, eos_token_id=49, bos_token_id=49)
        ref = hf_greedy(model, [1, 2, 3], 30, stop=None)  # no stop: the full 30 tokens
        if 49 in ref[:20]:
            break
    else:
        pytest.skip("no EOS-producing seed found")
    engine = make_engine(model, max_batch_size=2)

    async def main():
        a = engine.generate(greedy([1, 2, 3], 30))
        b = engine.generate(greedy([1, 2, 3], 30, ignore_eos=True))
        return await a.collect(), a.finish_reason, await b.collect(), b.finish_reason

    stopped, r1, full, r2 = asyncio.run(main())
    assert stopped == ref[: ref.index(49)] and r1 == "stop"
    assert full == ref and r2 == "length"


def test_cancellation_frees_the_slot(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=1)

    async def main():
        # 1) consumer leaves the loop early
        stream = engine.generate(GenerationRequest(PROMPTS[0], 400, temperature=0, ignore_eos=True))
        got = []
        async for t in stream:
            got.append(t)
            if len(got) == 3:
                break
        await stream.aclose()
        # 2) the consuming task is cancelled (client disconnect)
        started = asyncio.Event()

        async def consume():
            async for _ in engine.generate(GenerationRequest(PROMPTS[1], 400, temperature=0, ignore_eos=True)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the only slot is free again: a new request runs to the end
        out = await asyncio.wait_for(engine.complete(greedy(PROMPTS[2], 5)), timeout=30)
        await wait_for_async(lambda: engine.stats()["running"] == 0)
        return got, out

    got, out = asyncio.run(main())
    assert len(got) == 3
    assert out == hf_greedy(tiny_model, PROMPTS[2], 5)
    st = engine.stats()
    assert st["requests_cancelled"] == 2
    assert st["generated_tokens_total"] < 400  # the cancelled requests did not run to their budget


def test_overload_raises(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=1, max_waiting=1)

    async def main():
        long = engine.generate(GenerationRequest(PROMPTS[0], 450, temperature=0, ignore_eos=True))
        await wait_for_async(lambda: engine.stats()["running"] == 1)
        queued = engine.generate(greedy(PROMPTS[1], 3))  # fills the waiting queue
        with pytest.raises(EngineOverloaded):
            engine.generate(greedy(PROMPTS[2], 3))
        long.cancel()
        return await queued.collect(), await long.collect(), long.finish_reason

    queued_out, _, reason = asyncio.run(main())
    assert queued_out == hf_greedy(tiny_model, PROMPTS[1], 3)
    assert reason == "cancelled"
    assert engine.stats()["requests_rejected"] == 1


def test_invalid_requests_raise_and_engine_keeps_serving(tiny_model, make_engine):
    engine = make_engine(tiny_model, max_batch_size=2, max_context=64)

    async def main():
        bad = [
            greedy([], 5),
            greedy([1, 2, 1000], 5),  # token id outside the vocabulary
            greedy([-1], 5),
            greedy([1] * 60, 5),  # prompt + new tokens > max_context
            greedy([1], 0),
            GenerationRequest([1], 5, temperature=-1),
            GenerationRequest([1], 5, top_p=0),
        ]
        for r in bad:
            with pytest.raises(ValueError):
                engine.generate(r)
        return await engine.complete(greedy(PROMPTS[0], 10))

    assert asyncio.run(main()) == hf_greedy(tiny_model, PROMPTS[0], 10)
    assert engine.alive


def test_failed_step_does_not_kill_the_loop(tiny_model, make_engine):
    """A request whose sampling fails (inf logits after an extreme temperature) errors alone."""
    engine = make_engine(tiny_model, max_batch_size=2)

    async def main():
        bad = engine.generate(GenerationRequest(PROMPTS[0], 5, temperature=1e-45))  # logits/1e-45 -> inf/nan
        good = engine.generate(greedy(PROMPTS[1], 8))
        with pytest.raises(RuntimeError):
            await bad.collect()
        return await good.collect(), await engine.complete(greedy(PROMPTS[2], 4))

    good, after = asyncio.run(main())
    assert after == hf_greedy(tiny_model, PROMPTS[2], 4)
    assert engine.stats()["requests_failed"] == 1
    assert engine.alive


def test_shutdown_ends_streams(tiny_model):
    engine = GenerationEngine(tiny_model, max_batch_size=1)

    async def main():
        running = engine.generate(GenerationRequest(PROMPTS[0], 450, temperature=0, ignore_eos=True))
        await running.__anext__()
        engine.shutdown()
        with pytest.raises(EngineStopped):
            await running.collect()
        with pytest.raises(EngineStopped):
            engine.generate(greedy(PROMPTS[1], 3))

    asyncio.run(main())
    assert not engine.alive


def test_kv_cache_grows_with_use_only(tiny_model, make_engine):
    """A large max_batch_size costs no memory until requests need the slots; growth keeps running requests."""
    engine = make_engine(tiny_model, max_batch_size=64, initial_cache_tokens=16, cache_idle_release_s=0.5)
    assert engine.stats()["kv_cache_slots"] <= 2

    async def main():
        first = engine.generate(greedy(PROMPTS[3], 40))
        await first.__anext__()  # running, with its KV cache filled, before the cache grows under it
        rest = await asyncio.gather(*[engine.complete(greedy(p, 30)) for p in PROMPTS * 2])
        return [t async for t in first], rest

    tail, rest = asyncio.run(main())
    assert tail == hf_greedy(tiny_model, PROMPTS[3], 40)[1:]
    for p, out in zip(PROMPTS * 2, rest):
        assert out == hf_greedy(tiny_model, p, 30)
    st = engine.stats()
    assert 8 <= st["kv_cache_peak_slots"] <= 16 and st["kv_cache_peak_tokens"] >= 43
    # Idle for 0.5 s: the burst's cache is given back (the starting 16 tokens x 2 slots); it grows again on demand.
    asyncio.run(wait_for_async(lambda: (engine.stats()["kv_cache_tokens"], engine.stats()["kv_cache_slots"]) == (16, 2)))
    assert asyncio.run(engine.complete(greedy(PROMPTS[0], 30))) == hf_greedy(tiny_model, PROMPTS[0], 30)


def test_auto_dtype_follows_the_cpu():
    """'auto' is bfloat16 exactly where the CPU has native bf16; explicit dtypes pass through."""
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    native = bool(flags & {"amx_bf16", "avx512_bf16"})
    assert native_bf16() is native
    assert resolve_dtype("auto") == ("bfloat16" if native else "float32")
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    eng = GenerationEngine(make_model(), dtype="auto", max_batch_size=2, warmup=False)
    try:
        assert eng.dtype == resolve_dtype("auto")
    finally:
        eng.shutdown()



def test_our_runner_matches_the_stock_transformers_runner(tiny_model, make_engine):
    """A/B through the same engine: our batched GPT-2 pass vs the stock transformers model (one row at a time,
    its own cache), requests joining and leaving a shared batch: the same greedy tokens."""
    prompts = PROMPTS * 2
    ours = greedy_all(make_engine(tiny_model, max_batch_size=3), prompts, 25)
    stock = greedy_all(make_engine(tiny_model, max_batch_size=3, runner="transformers"), prompts, 25)
    assert ours == stock
    assert all(len(o) == 25 for o in ours)
