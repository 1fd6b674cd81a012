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
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F

MIN_DECODE_STEPS = 16  # a call allowed fewer new tokens than this is not packed (`worth_packing`)
MIN_ROWS = 8  # nor a call of fewer rows: at 1 row packed products gain little or lose (`benchmarks/packed_linear.py`)


class DenseLinears:
    """The plain products a decoding step uses (`F.linear`, `torch.addmm`): the default, on any device."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] @ weight[out, in].T + bias → [..., out]."""
        return F.linear(x, weight, bias)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """res [B, out] + x [B, in] @ weight[out, in].T, in one kernel."""
        return torch.addmm(res, x, weight.t())


DENSE = DenseLinears()


class PackedLinears(DenseLinears):
    """`DenseLinears` on oneDNN-packed copies of `weights` (each [out, in], float32, CPU); a weight not among them
    falls back to the plain product. Build with `pack`. `batch_hint`: the rows per product the packing is laid out
    for (any number of rows gives the same result)."""

    def __init__(self, weights: Iterable[torch.Tensor], batch_hint: int) -> None:
        with torch.no_grad():  # weights are held by reference: `id` stays theirs while this object lives
            self._packed = {id(w): (w, torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint))
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


def pack(weights: Iterable[torch.Tensor], batch_hint: int) -> PackedLinears | None:
    """`PackedLinears` over `weights`, or None when any of them cannot be packed here (`can_pack`)."""
    weights = list(weights)
    if not weights or not all(map(can_pack, weights)):
        return None
    return PackedLinears(weights, batch_hint)


__all__ = ["DENSE", "MIN_DECODE_STEPS", "MIN_ROWS", "DenseLinears", "PackedLinears", "can_pack", "pack",
           "worth_packing"]
