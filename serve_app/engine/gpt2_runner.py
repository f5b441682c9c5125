"""`GPT2Runner`: our GPT-2 forward pass over a loaded Hugging Face ``GPT2LMHeadModel``'s weights (the same
tensors, no copy in float32), on a slot-based `KVCache`.

One pass serves a whole step: decode rows (one token each, attention over their slots' cache) and the new prompts,
packed back to back without padding (causal attention within each prompt), share every matmul, so the weights are
read once per step. Logits are computed for decode rows and each prompt's last position only.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F

from serve_app.engine.kv_cache import KVCache
from serve_app.engine.linear import Linear
from serve_app.engine.model_runner import StepInputs

# The GPT-2 activations we run, as torch's GELU approximation (gelu_fast is gelu_new's tanh form, rounded differently).
GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
# int8: dynamically quantized linear layers (int8 weights) around float32 everything else.
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}


def check_supported(model: torch.nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "gpt2":
        raise TypeError(f"GPT2Runner supports GPT-2 (model_type 'gpt2'), got {getattr(cfg, 'model_type', None)!r}")
    if getattr(cfg, "add_cross_attention", False):
        raise TypeError("cross-attention GPT-2 variants are not supported")
    if cfg.activation_function not in GELU_APPROXIMATION:
        raise TypeError(f"unsupported activation {cfg.activation_function!r}")
    if next(model.parameters()).device.type != "cpu":
        raise TypeError("GPT2Runner runs on CPU; move the model to CPU first")


class Block:
    """One transformer block's weights."""

    def __init__(self, blk: torch.nn.Module, scale: float, cdt: torch.dtype, packed_batch: int, int8: bool):
        def lin(conv) -> Linear:
            return Linear(conv.weight, conv.bias, cdt, packed_batch, int8=int8)

        self.ln1 = (blk.ln_1.weight.detach(), blk.ln_1.bias.detach())
        self.attn = lin(blk.attn.c_attn)
        self.proj = lin(blk.attn.c_proj)
        self.ln2 = (blk.ln_2.weight.detach(), blk.ln_2.bias.detach())
        self.fc = lin(blk.mlp.c_fc)
        self.mlp_proj = lin(blk.mlp.c_proj)
        self.scale = scale


class GPT2Runner:
    """Parameters: ``dtype`` "float32" (HF's math up to summation order: the tests check greedy tokens equal HF's) or
    "bfloat16" (numerics change, quality-guarded);
    ``max_slots`` KV-cache slots (the engine's max_batch_size); ``max_context`` positions per request (at most
    n_positions); ``attention`` "auto", "sdpa" or "matmul" for decode rows (auto: what measured fastest for the
    dtype, bench/ENGINE.md)."""

    def __init__(self, model: torch.nn.Module, *, dtype: str = "float32", max_slots: int = 16,
                 max_context: int = 1024, attention: str = "auto", initial_cache_tokens: int = 256):
        check_supported(model)
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
        if attention not in ("auto", "sdpa", "matmul"):
            raise ValueError("attention must be 'auto', 'sdpa' or 'matmul'")
        cfg = model.config
        tr = model.transformer
        self.dtype = dtype
        self.cdt = cdt = TORCH_DTYPES[dtype]
        self.attention = attention if attention != "auto" else ("sdpa" if dtype == "bfloat16" else "matmul")
        self.vocab_size = cfg.vocab_size
        self.eos_token_id = cfg.eos_token_id
        self.max_context = int(min(max_context, cfg.n_positions))
        self.n_embd, self.n_head = cfg.n_embd, cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        self.gelu = GELU_APPROXIMATION[cfg.activation_function]
        self.wte = tr.wte.weight.detach().float()  # [V, E]; embedding lookups stay fp32
        self.wpe = tr.wpe.weight.detach().float()
        head = getattr(model, "lm_head", None)
        lm = head.weight if head is not None else tr.wte.weight  # [V, E]; tied to wte for GPT-2
        int8 = dtype == "int8"
        self.lm_head = Linear(lm.t(), getattr(head, "bias", None), cdt, max_slots, int8=int8)
        self.ln_f = (tr.ln_f.weight.detach(), tr.ln_f.bias.detach())
        self.blocks = []
        for i, blk in enumerate(tr.h):
            scale = 1.0 / math.sqrt(self.head_dim) if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            self.blocks.append(Block(blk, scale, cdt, max_slots, int8))
        self.cache = KVCache(n_layer=cfg.n_layer, n_head=cfg.n_head, head_dim=self.head_dim, dtype=cdt,
                             max_slots=max_slots, max_tokens=self.max_context, initial_tokens=initial_cache_tokens)

    # ------------------------------------------------------------------ ModelRunner
    def move_slot(self, src: int, dst: int, tokens: int) -> None:
        self.cache.move(src, dst, tokens)

    def release_cache(self) -> None:
        self.cache.release()

    def cache_info(self) -> dict[str, Any]:
        return {"kv_cache_tokens": self.cache.tokens, "kv_cache_slots": self.cache.slots,
                "kv_cache_peak_tokens": self.cache.peak[0], "kv_cache_peak_slots": self.cache.peak[1]}

    def forward(self, step: StepInputs) -> torch.Tensor:
        """Logits [nd + b, V]: decode rows, then each prompt's last position."""
        E, H, D, cdt = self.n_embd, self.n_head, self.head_dim, self.cdt
        nd, b, base = len(step.decode_tokens), len(step.prompts), step.base
        lens = [len(p) for p in step.prompts]
        self.cache.ensure(max([p + 1 for p in step.decode_positions] + [n + 1 for n in lens]), base + b)
        cap = self.cache.tokens
        heads = torch.arange(H)[None, :]
        xs = []
        if nd:
            tok = torch.tensor(step.decode_tokens, dtype=torch.long)
            pos = torch.tensor(step.decode_positions, dtype=torch.long)
            Td = int(pos.max()) + 1
            # rows of the cache viewed as [slots*heads*capacity, head_dim] that this step writes (index_copy_ is
            # ~2x cheaper than advanced-index assignment here)
            widx = ((torch.arange(nd)[:, None] * H + heads) * cap + pos[:, None]).reshape(-1)
            valid = torch.arange(Td)[None, :] <= pos[:, None]  # [nd, Td]
            if self.attention == "sdpa":
                dmask = valid[:, None, None, :]
            else:  # additive, one row per (request, head): baddbmm adds it inside the score matmul
                dmask = torch.zeros((nd, H, 1, Td), dtype=cdt).masked_fill_(~valid[:, None, None, :], float("-inf"))
                dmask = dmask.view(nd * H, 1, Td)
            xs.append(self.wte[tok] + self.wpe[pos])
        if b:
            # Prompts are packed back to back (no padding): the linear layers, most of a prefill's cost, only see
            # real tokens.
            ids = torch.tensor([t for p in step.prompts for t in p], dtype=torch.long)
            ppos = torch.cat([torch.arange(n) for n in lens])
            starts = [0, *itertools.accumulate(lens)]
            xs.append(self.wte[ids] + self.wpe[ppos])
            prompt_of = torch.repeat_interleave(torch.arange(b), torch.tensor(lens))  # [tokens]
            # every prompt token's cache rows, written with one index_copy_ per layer for all prompts
            pidx = (((base + prompt_of)[:, None] * H + heads) * cap + ppos[:, None]).reshape(-1)
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        for li, L in enumerate(self.blocks):
            h = F.layer_norm(x, (E,), *L.ln1, self.eps).to(cdt)
            qkv = L.attn(h)  # [rows, 3E]
            kc, vc = self.cache.layer(li)
            outs = []
            if nd:
                q, k, v = qkv[:nd].view(nd, 3, H, D).unbind(1)  # [nd, H, D]
                kc.view(-1, D).index_copy_(0, widx, k.reshape(nd * H, D))
                vc.view(-1, D).index_copy_(0, widx, v.reshape(nd * H, D))
                if self.attention == "sdpa":
                    K, V = kc[:nd, :, :Td], vc[:nd, :, :Td]  # views of the cache, no copy
                    o = F.scaled_dot_product_attention(q.unsqueeze(2), K, V, attn_mask=dmask, scale=L.scale)
                else:
                    # (request, head) pairs as one batch of [1, Td] score rows over views of the cache; the scale and
                    # the mask ride inside baddbmm: three ops per layer, not five.
                    K = kc[:nd, :, :Td].reshape(nd * H, Td, D)
                    V = vc[:nd, :, :Td].reshape(nd * H, Td, D)
                    att = torch.baddbmm(dmask, q.reshape(nd * H, 1, D), K.transpose(1, 2), alpha=L.scale)
                    o = torch.bmm(torch.softmax(att, dim=-1), V)
                outs.append(o.reshape(nd, E))
            if b:
                q, k, v = qkv[nd:].view(-1, 3, H, D).unbind(1)  # [tokens, H, D]
                kc.view(-1, D).index_copy_(0, pidx, k.reshape(-1, D))
                vc.view(-1, D).index_copy_(0, pidx, v.reshape(-1, D))
                for i, n in enumerate(lens):  # attention per prompt (causal): cheap next to the linear layers
                    qi, ki, vi = (t[starts[i]: starts[i] + n].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
                    o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=L.scale)
                    outs.append(o.transpose(0, 1).reshape(n, E))
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = L.proj.add_to(x, o.to(cdt))  # the residual add fused into the projection
            h = F.layer_norm(x, (E,), *L.ln2, self.eps).to(cdt)
            x = L.mlp_proj.add_to(x, L.fc(h, gelu=self.gelu))
        if b:
            last = x[nd:][torch.tensor(starts[1:]) - 1]  # each prompt's last position
            x = last if not nd else torch.cat([x[:nd], last])
        h = F.layer_norm(x, (E,), *self.ln_f, self.eps).to(cdt)
        return self.lm_head(h).float()

    def warmup(self, max_batch: int) -> None:
        """A few tiny passes so the first request does not pay kernel set-up."""
        with torch.inference_mode():
            for n in sorted({1, min(2, max_batch)}):
                self.forward(StepInputs([], [], [[0, 1, 2, 3]] * n, 0))
                self.forward(StepInputs([4] * n, [4] * n, [], n))
            if max_batch >= 2:
                self.forward(StepInputs([4], [4], [[0, 1, 2, 3]], 1))
