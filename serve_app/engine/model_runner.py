"""The interface between the engine and a model: one forward pass over a planned step, on the runner's own KV
cache, returning last-position logits. Two runners:

* `serve_app.engine.gpt2_runner.GPT2Runner` (the default): our batched GPT-2 forward pass over the Hugging Face
  weights, every row of a step in one pass;
* `TransformersRunner` (below): the stock transformers model, one row at a time with its own cache per slot (``cache=``); slow,
  but the reference an A/B run or a test can put next to ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class StepInputs:
    """Decode rows (slots 0..nd-1: ``decode_tokens`` at ``decode_positions``) then prompts to prefill
    (slots ``base``..``base``+len-1)."""

    decode_tokens: list[int]
    decode_positions: list[int]
    prompts: list[list[int]]
    base: int

    @property
    def rows(self) -> int:
        return len(self.decode_tokens) + len(self.prompts)


class ModelRunner(Protocol):
    dtype: str  # canonical compute dtype name ("float32", "bfloat16")
    vocab_size: int
    max_context: int  # positions a request may use (prompt + new tokens)
    eos_token_id: int | None

    def forward(self, step: StepInputs) -> torch.Tensor:
        """Logits ``[rows, vocab]`` (float32): decode rows, then each prompt's last position."""

    def move_slot(self, src: int, dst: int, tokens: int) -> None:
        """Copy slot ``src``'s first ``tokens`` cache positions into slot ``dst``."""

    def cache_info(self) -> dict[str, Any]:
        """``kv_cache_tokens`` and ``kv_cache_slots`` for stats."""

    def release_cache(self) -> None:
        """No request is running: give back KV-cache memory grown for earlier ones."""


class TransformersRunner:
    """The stock `transformers` model as a runner: each row runs alone through ``model(..., cache=...)`` with
    a per-slot cache. float32 only; for A/B runs and tests, not for serving."""

    dtype = "float32"

    def __init__(self, model: torch.nn.Module, *, max_context: int = 1024):
        cfg = model.config
        self.model = model
        self.vocab_size = cfg.vocab_size
        self.eos_token_id = cfg.eos_token_id
        self.max_context = int(min(max_context, cfg.n_positions))
        self._past: dict[int, Any] = {}

    def _run(self, slot: int, ids: list[int], cache: Any) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        self._past[slot] = out.cache
        return out.logits[0, -1].float()

    def forward(self, step: StepInputs) -> torch.Tensor:
        rows = [self._run(i, [t], self._past[i]) for i, t in enumerate(step.decode_tokens)]
        rows += [self._run(step.base + j, list(p), None) for j, p in enumerate(step.prompts)]
        return torch.stack(rows)

    def move_slot(self, src: int, dst: int, tokens: int) -> None:
        self._past[dst] = self._past.pop(src)

    def release_cache(self) -> None:
        self._past.clear()

    def cache_info(self) -> dict[str, Any]:
        return {"kv_cache_tokens": max((self._past[s].get_seq_length() for s in self._past), default=0),
                "kv_cache_slots": len(self._past)}
