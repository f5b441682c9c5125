"""Does a served system compute what the weights say? Its greedy text vs transformers' float32 greedy text.

Before each OpenAI-style server is loaded, the benchmark asks it for one greedy completion (``temperature: 0``)
of a prompt of bench/prompts.txt and compares the text with ``model.generate(do_sample=False)`` in float32 on
the same weights (computed once, in the harness). Equal text means the same greedy tokens; a system computing
in bfloat16 may differ at near-ties (its dtype is recorded next to the check).
"""

from __future__ import annotations

from typing import Optional

import httpx


def reference_completion(model_dir: str, prompt: str, new_tokens: int) -> dict:
    """transformers' float32 greedy continuation of ``prompt`` (stops at end-of-text, as the servers do)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=model.config.eos_token_id)[0, ids.shape[1]:].tolist()
    eos = model.config.eos_token_id
    if eos in out:
        out = out[: out.index(eos)]
    return {"prompt": prompt, "token_ids": out, "text": tok.decode(out)}


def compare(reference: dict, served_text: Optional[str]) -> dict:
    """Pure: the check's record (``matches`` is exact text equality)."""
    matches = served_text is not None and served_text == reference["text"]
    record = {"prompt": reference["prompt"], "new_tokens": len(reference["token_ids"]), "matches": matches}
    if not matches:
        ref = reference["text"]
        got = served_text or ""
        record["first_difference_at_char"] = next(
            (i for i, (x, y) in enumerate(zip(ref, got)) if x != y), min(len(ref), len(got)))
        record["served_text"] = got[:300]
        record["reference_text"] = ref[:300]
    return record


def check_server(base_url: str, reference: dict, new_tokens: int, timeout_s: float = 300.0) -> dict:
    body = {"prompt": reference["prompt"], "max_tokens": new_tokens, "temperature": 0}
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            resp = client.post(f"{base_url}/v1/completions", json=body)
            resp.raise_for_status()
            text = resp.json()["choices"][0]["text"]
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        return {"prompt": reference["prompt"], "matches": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return compare(reference, text)
