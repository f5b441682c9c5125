"""Our GPT-2 pass against Hugging Face's forward on the same weights: prefill of several prompts in one
pass and the decode step after it, logits compared directly."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.gpt2_runner import GPT2Runner
from serve_app.engine.model_runner import StepInputs
from tests.engine.engine_testlib import make_model


@pytest.mark.parametrize("lens", [[5, 9, 17], [200, 3, 2]], ids=["short", "long-and-short"])
def test_prefill_then_decode_logits_match_hf(lens):
    model = make_model(seed=4)
    runner = GPT2Runner(model, max_slots=len(lens) + 1)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 999, (n,), generator=g).tolist() for n in lens]
    nxt = [7 + i for i in range(len(lens))]
    with torch.inference_mode():
        pre = runner.forward(StepInputs([], [], prompts, 0))  # slots 0..b-1
        dec = runner.forward(StepInputs(nxt, lens, [], len(lens)))  # one more token each, from the cache
        for i, p in enumerate(prompts):
            ref = model(torch.tensor([p + [nxt[i]]])).logits[0]
            torch.testing.assert_close(pre[i], ref[len(p) - 1], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(dec[i], ref[len(p)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5, 32])
def test_fused_residual_add_is_bit_identical_to_the_separate_add(rows):
    from serve_app.engine.linear import Linear

    g = torch.Generator().manual_seed(rows)
    lin = Linear(torch.randn(96, 64, generator=g), torch.randn(64, generator=g), torch.float32, packed_batch=8)
    x, residual = torch.randn(rows, 96, generator=g), torch.randn(rows, 64, generator=g)
    assert torch.equal(lin.add_to(residual, x), residual + lin(x))
