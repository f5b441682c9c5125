"""Helpers for the generation-engine tests: small random GPT-2 models built in memory (no files, no Ray)."""

from __future__ import annotations

import asyncio

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from serve_app.engine import GenerationRequest

EOS = 999


def make_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    # A larger initializer_range than GPT-2's 0.02 makes random-init greedy outputs vary with the context
    # (with 0.02 a tiny model repeats one token), so KV-cache or batching mistakes change the tokens.
    kw = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=512, bos_token_id=EOS,
              eos_token_id=EOS, initializer_range=0.3)
    kw.update(overrides)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kw)).eval()


def hf_greedy(model: GPT2LMHeadModel, prompt: list[int], max_new_tokens: int, stop: int | None | str = "eos"
              ) -> list[int]:
    """Greedy continuation by HF's own generate, up to (excluding) the first stop token ("eos": the model's EOS;
    None: no stop token, always max_new_tokens tokens)."""
    eos = model.config.eos_token_id if stop == "eos" else stop
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, min_new_tokens=0,
                             do_sample=False, pad_token_id=model.config.eos_token_id, eos_token_id=eos)
    toks = out[0, len(prompt):].tolist()
    return toks[: toks.index(eos)] if eos is not None and eos in toks else toks


def greedy(prompt, n, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n, temperature=0, **kw)


def greedy_all(engine, prompts, n) -> list[list[int]]:
    """All prompts at once through one engine: n greedy tokens each, end-of-text ignored."""

    async def main():
        return await asyncio.gather(*[engine.complete(greedy(p, n, ignore_eos=True)) for p in prompts])

    return asyncio.run(main())
