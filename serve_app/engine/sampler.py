"""Token choice from last-position logits: greedy rows by one batched argmax; temperature / top-p rows one by
one with the request's own generator (so a seed gives the same tokens alone or in any batch)."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def sample(logits: torch.Tensor, params: Sequence[tuple[float, float, Any]]) -> list[Any]:
    """``params[i] = (temperature, top_p, generator)`` for row i. Returns a token id per row, or, for a row whose
    sampling failed (e.g. inf/nan probabilities), the exception (that request alone ends with it)."""
    out: list[Any] = logits.argmax(dim=-1).tolist()
    for i, (temperature, top_p, generator) in enumerate(params):
        if temperature <= 0:
            continue
        try:
            probs = torch.softmax(logits[i].float() / temperature, dim=-1)
            if top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = (torch.cumsum(sp, dim=-1) - sp) < top_p  # always keeps the most likely token
                choice = torch.multinomial(sp * keep, 1, generator=generator)
                out[i] = int(si[choice])
            else:
                out[i] = int(torch.multinomial(probs, 1, generator=generator))
        except Exception as e:  # noqa: BLE001 - reported per request
            out[i] = e
    return out
