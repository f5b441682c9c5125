"""Linear layers for the GPT-2 runner: ``x @ W + b`` with W given as [in, out] (HF's Conv1D layout)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def row_bucket(m: int) -> int:
    """Row count a oneDNN matmul runs at: exact up to 8, then multiples of 16, then of 64 past 256."""
    if m <= 8:
        return m
    if m <= 256:
        return (m + 15) // 16 * 16
    return (m + 63) // 64 * 64


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with zero rows appended up to `row_bucket` of its row count (``x`` itself when already there)."""
    m = x.shape[0]
    mp = row_bucket(m)
    return x if mp == m else torch.cat([x, x.new_zeros(mp - m, x.shape[1])])


class Linear:
    """The weight is pre-packed once for oneDNN in the compute dtype (float32 or bfloat16; AMX on CPUs that have
    it; ``packed_batch`` is a layout hint, any batch size works), with the tanh-GELU fused into the MLP's first
    matmul. Why packed in float32 too: unpacked ``addmm`` re-packs the weight on every call once a step has more
    than one row, so a decode step at batch 8 cost 2.5x batch 1; packed it costs 1.2-1.4x (bench/ENGINE.md).
    ``torch.addmm`` on the model's own tensor (float32) / ``F.linear`` (bfloat16) where oneDNN is missing.
    """

    def __init__(self, w_in_out: torch.Tensor, bias: torch.Tensor | None, cdt: torch.dtype, packed_batch: int,
                 int8: bool = False):
        self.cdt = cdt
        w_in_out = w_in_out.detach()
        self.b = None if bias is None else bias.detach().to(cdt)
        if int8:
            self.kind, self.w = "int8", _int8_dynamic(w_in_out.t().float().contiguous(), self.b)
            return
        wt = w_in_out.t().to(cdt).contiguous()  # [out, in]
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(wt, batch_size=packed_batch)
            probe = torch.zeros(2, wt.shape[1], dtype=cdt)
            torch.ops.mkldnn._linear_pointwise(probe, packed, self.b, "none", [], "")
            self.kind, self.w = "dnnl", packed
        except Exception:  # pragma: no cover - torch built without oneDNN
            log.info("oneDNN packed linear unavailable; using %s", cdt)
            if cdt == torch.float32:
                self.kind, self.w = "addmm", w_in_out.float()
            else:
                self.kind, self.w = "linear", wt

    def __call__(self, x: torch.Tensor, gelu: str | None = None) -> torch.Tensor:
        """``x @ W + b``, then GELU when ``gelu`` is given: "tanh" (GPT-2's gelu_new) or "none" (exact erf)."""
        if self.kind == "int8":
            y = self.w(x)
        elif self.kind == "addmm":
            y = torch.mm(x, self.w) if self.b is None else torch.addmm(self.b, x, self.w)
        elif self.kind == "dnnl":
            # oneDNN builds (JITs) a kernel per new row count M (~1.5 ms per weight shape, measured); mixed
            # decode+prefill steps produce many distinct M, so pad M up to a few buckets to reuse kernels.
            m = x.shape[0]
            y = torch.ops.mkldnn._linear_pointwise(pad_rows(x), self.w, self.b, "gelu" if gelu else "none", [],
                                                   gelu or "")
            return y[:m]
        else:
            y = F.linear(x, self.w, self.b)
        # One fused op, not gelu_new's seven: at batch 1 (int8) each elementwise op's dispatch costs as much as its math.
        return F.gelu(y, approximate=gelu) if gelu else y

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + (x @ W + b)``: one oneDNN call with a sum post-op (bit-identical to the separate add, tested),
        so the residual stream costs no extra op per block."""
        if self.kind != "dnnl" or residual.dtype != self.cdt:  # bfloat16 compute: the residual stream stays fp32
            return residual + self(x).to(residual.dtype)
        m = x.shape[0]
        return torch.ops.mkldnn._linear_pointwise.binary(pad_rows(x), pad_rows(residual), self.w, self.b, "add")[:m]


def _int8_dynamic(w_out_in: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module:
    """A dynamically quantized linear: int8 weights per output channel, activations quantized per call (fbgemm /
    x86 kernels: 4x less weight memory traffic than float32, which is what a small-batch decode step waits on)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    lin = torch.nn.Linear(w_out_in.shape[1], w_out_in.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w_out_in)
        if bias is not None:
            lin.bias.copy_(bias.float())
    lin.qconfig = per_channel_dynamic_qconfig
    return DynamicQuantLinear.from_float(lin)
