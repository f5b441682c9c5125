"""The slot-based KV cache: ``[layers, slots, heads, capacity, head_dim]`` keys and values.

Memory follows use: it starts small and doubles its token capacity (up to ``max_tokens``) and its slot count
(up to ``max_slots``) when requests need them, keeping what is stored; `release` goes back to the starting size
when nothing is stored (the engine calls it after ``cache_idle_release_s`` with no request), so one burst does not
pin its peak.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, *, n_layer: int, n_head: int, head_dim: int, dtype: torch.dtype, max_slots: int,
                 max_tokens: int, initial_tokens: int = 256, initial_slots: int = 2):
        self.shape_tail = (n_head, head_dim)
        self.n_layer = n_layer
        self.dtype = dtype
        self.max_slots = max_slots
        self.max_tokens = max_tokens
        self.tokens = 0  # positions per slot
        self.slots = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.peak = (0, 0)  # largest (tokens, slots) ever held
        self.initial = (min(max_tokens, max(16, initial_tokens)), min(initial_slots, max_slots))
        self.ensure(*self.initial)

    def release(self) -> None:
        """Back to the starting size, dropping what is stored (only call it when no request is running)."""
        if (self.tokens, self.slots) != self.initial:
            self.k = self.v = None
            self.tokens = self.slots = 0
            self.ensure(*self.initial)

    def ensure(self, tokens: int, slots: int = 1) -> None:
        """Grow (doubling) to hold ``tokens`` positions for ``slots`` requests."""
        if tokens <= self.tokens and slots <= self.slots:
            return
        cap = max(16, self.tokens)
        while cap < tokens:
            cap *= 2
        cap = min(cap, self.max_tokens)
        nslots = max(1, self.slots)
        while nslots < slots:
            nslots *= 2
        nslots = min(nslots, self.max_slots)
        shape = (self.n_layer, nslots, self.shape_tail[0], cap, self.shape_tail[1])
        k = torch.zeros(shape, dtype=self.dtype)
        v = torch.zeros(shape, dtype=self.dtype)
        if self.k is not None:
            k[:, : self.slots, :, : self.tokens] = self.k
            v[:, : self.slots, :, : self.tokens] = self.v
        self.k, self.v, self.tokens, self.slots = k, v, cap, nslots
        self.peak = (max(self.peak[0], cap), max(self.peak[1], nslots))

    def move(self, src: int, dst: int, tokens: int) -> None:
        """Copy the first ``tokens`` positions of slot ``src`` into slot ``dst`` (slot compaction)."""
        self.k[:, dst, :, :tokens] = self.k[:, src, :, :tokens]
        self.v[:, dst, :, :tokens] = self.v[:, src, :, :tokens]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s keys and values, ``[slots, heads, capacity, head_dim]`` views."""
        return self.k[i], self.v[i]

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()
