"""Linear layers of a CPU decoding engine on weights prepacked once per generation call (oneDNN).

A plain `F.linear` on a CPU lays the weight out for its matmul kernel on every call. At decoding's few rows per
step that repacking costs as much as the product itself: on this project's 2-core AVX-512 machine a [64, 576] ×
[576, 3072] product runs at ~50-100 GFLOP/s and the SmolLM2 head ([64, 576] × [576, 49152]) at ~45, against
~125 and ~105 on weights packed beforehand (`benchmarks/packed_linear.py`). PyTorch's oneDNN backend packs a weight
with `torch.ops.mkldnn._reorder_linear_weight` and multiplies with `torch.ops.mkldnn._linear_pointwise`, the
pair its own compiler (inductor's CPU weight prepacking under freezing) emits for float32 linears; the same idea
as vLLM's and IPEX's CPU linears on prepacked weights.

Packed copies are made when a generation call starts (`PackedLinears`) and dropped when it ends, so they can never
be stale (weights change only between calls: the optimizer step, `sync_weights`) and cost memory only while the
engine decodes (the engine's float32 linear and head weights once more, 0.54 GB for SmolLM2-135M: the RL step of
`benchmarks/real_model.py` peaked at 3.51 GB with packing, 3.33 GB with `rollout.pack_weights=false`). Packing the
whole of SmolLM2-135M takes ~0.3 s here, so the engine packs only calls that can gain it back (`worth_packing`;
`rollout.pack_weights = false` turns it off). Only float32 weights on a CPU with oneDNN are packed (this CPU's
oneDNN refuses bfloat16 packing); elsewhere `pack` returns None and the engine keeps `DenseLinears`.

bfloat16 weights on an x86 CPU without bfloat16 dot products (no AVX-512 BF16, no AMX) go through
`Bf16OnFp32Linears`: PyTorch's bfloat16 products there convert to float32 inside the kernel and run ~8x slower than
float32 ones (a 2-core AVX2 EPYC: 15-18 GFLOP/s against 113-120 packed at decoding's 64 rows, session 18). The weights
are packed as float32 copies of their bfloat16 values, the bfloat16 activations widened exactly, and each product's
float32 sum rounded to bfloat16 once: the arithmetic of a bfloat16 matmul with float32 accumulation (what oneDNN's
kernel does), so results match the plain bfloat16 product up to summation order (within one bfloat16 rounding step).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F

MIN_DECODE_STEPS = 16  # a call allowed fewer new tokens than this is not packed (`worth_packing`)
MIN_ROWS = 8  # nor a call of fewer rows: at 1 row packed products gain little or lose (`benchmarks/packed_linear.py`)


class DenseLinears:
    """The plain products a decoding step uses (`F.linear`, `torch.addmm`, `torch.bmm`, `torch.baddbmm`): the
    default, on any device."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] @ weight[out, in].T + bias → [..., out]."""
        return F.linear(x, weight, bias)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """res [B, out] + x [B, in] @ weight[out, in].T, in one kernel."""
        return torch.addmm(res, x, weight.t())

    def bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched product of activations a [n, i, k] @ b [n, k, j] (attention, RoPE)."""
        return torch.bmm(a, b)

    def baddbmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        """bias + alpha · a @ b, batched, in one kernel (attention scores)."""
        return torch.baddbmm(bias, a, b, alpha=alpha)


DENSE = DenseLinears()


class PackedLinears(DenseLinears):
    """`DenseLinears` on oneDNN-packed copies of `weights` (each [out, in], float32, CPU); a weight not among them
    falls back to the plain product. Build with `pack`. `batch_hint`: the rows per product the packing is laid out
    for (any number of rows gives the same result)."""

    def __init__(self, weights: Iterable[torch.Tensor], batch_hint: int) -> None:
        with torch.no_grad():  # weights are held by reference: `id` stays theirs while this object lives
            # packed in float32 (`.float()` is the tensor itself for float32 weights; bfloat16 ones, for
            # `Bf16OnFp32Linears`, are widened exactly)
            self._packed = {id(w): (w, torch.ops.mkldnn._reorder_linear_weight(w.detach().float(), batch_hint))
                            for w in weights}

    def _get(self, weight: torch.Tensor) -> torch.Tensor | None:
        entry = self._packed.get(id(weight))
        return None if entry is None else entry[1]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return super().linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return super().residual(res, x, weight)
        return torch.ops.mkldnn._linear_pointwise.binary(x, res, packed, None, "add")


class Bf16OnFp32Linears(PackedLinears):
    """`PackedLinears` for bfloat16 weights on a CPU without bfloat16 dot products (module docstring): float32
    packed copies of the weights' bfloat16 values; inputs widened, each result rounded to the input's dtype once.
    A weight not among them falls back to the plain bfloat16 product. The activation products (`bmm`, `baddbmm`:
    attention, RoPE) are widened and rounded the same way."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return F.linear(x, weight, bias)
        b = None if bias is None else bias.float()
        return torch.ops.mkldnn._linear_pointwise(x.float(), packed, b, "none", [], "").to(x.dtype)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return torch.addmm(res, x, weight.t())
        out = torch.ops.mkldnn._linear_pointwise.binary(x.float(), res.float(), packed, None, "add")
        return out.to(res.dtype)

    def bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a.float(), b.float()).to(a.dtype)

    def baddbmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.baddbmm(bias.float(), a.float(), b.float(), alpha=alpha).to(a.dtype)


@functools.cache
def bf16_dot_products() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions PyTorch uses (AVX-512 BF16 or AMX tiles); False
    on other x86 CPUs. Non-x86 CPUs count as having them (their bfloat16 path is left as it is)."""
    cpu = torch.cpu
    if not getattr(cpu, "_is_avx2_supported", lambda: False)():
        return True
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@functools.cache
def _onednn_packs_float32() -> bool:
    """PyTorch is built with oneDNN and a trial float32 pack succeeds (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), 8)
    except (RuntimeError, AttributeError):
        return False
    return True


def can_pack(weight: torch.Tensor) -> bool:
    """Whether oneDNN packs `weight` here: a float32 CPU tensor, and this PyTorch packs float32 with oneDNN."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_packs_float32()


def worth_packing(rows: int, new_tokens: int) -> bool:
    """Whether a generation call of `rows` rows × up to `new_tokens` new tokens is packed: at least MIN_ROWS rows
    and MIN_DECODE_STEPS tokens allowed (the packing costs ~3 decoding steps of a 64-row batch; at 8 rows packed
    products run 1.6–2.9× faster, at 1 row some run slower). A call that ends early (EOS, stop strings) may not
    gain it back."""
    return rows >= MIN_ROWS and new_tokens >= MIN_DECODE_STEPS


def emulates_bf16(weight: torch.Tensor) -> bool:
    """Whether `weight` is packed as float32 for `Bf16OnFp32Linears`: a bfloat16 CPU tensor on a CPU without
    bfloat16 dot products (`bf16_dot_products`), where oneDNN packs float32."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and not bf16_dot_products()
            and _onednn_packs_float32())


def pack(weights: Iterable[torch.Tensor], batch_hint: int) -> PackedLinears | None:
    """`PackedLinears` over `weights` (float32, `can_pack`), `Bf16OnFp32Linears` (bfloat16 on a CPU without
    bfloat16 dot products, `emulates_bf16`), or None when some of them can be packed neither way."""
    weights = list(weights)
    if weights and all(map(can_pack, weights)):
        return PackedLinears(weights, batch_hint)
    if weights and all(map(emulates_bf16, weights)):
        return Bf16OnFp32Linears(weights, batch_hint)
    return None


__all__ = ["DENSE", "MIN_DECODE_STEPS", "MIN_ROWS", "Bf16OnFp32Linears", "DenseLinears", "PackedLinears",
           "bf16_dot_products", "can_pack", "emulates_bf16", "pack", "worth_packing"]
