"""Token credit transforms: token advantages [B, T] and per-token segment labels [B, T] → advantages [B, T].

A credit transform redistributes a sequence's advantage over its tokens (HICRA amplifies planning tokens;
MoCA routes credit to perception or reasoning segments). Signature:
``fn(advantages, segment_ids, params=None) -> advantages``; ``params`` is the method's own constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


def identity(advantages: Tensor, segment_ids: Tensor, params: object | None = None) -> Tensor:
    """No credit transform: A'_{i,t} = A_{i,t} (the outcome advantage on every token, as in GRPO).

    ``segment_ids`` and ``params`` are unused. Returns the input tensor itself, not a copy.
    """
    return advantages  # [B, T]


@dataclass
class HicraParams:
    """Inputs of ``hicra`` beyond advantages and segments.

    The planning mask travels here rather than as a segment label: a planning token is a tag over the reasoning
    (or answer) segment, not a segment of its own, and ``segment_ids`` holds one label per token.
    """

    planning_mask: Tensor  # [B, T] bool: 1 on planning tokens (strategic-gram matches), aligned with advantages
    alpha: float = 0.2  # α, the planning-token amplification (HICRA's value)


def hicra(advantages: Tensor, segment_ids: Tensor, params: HicraParams | None = None) -> Tensor:
    """HICRA planning-token credit ("Emergent Hierarchical Reasoning in LLMs through RL", arXiv 2509.03646).

    Â_{i,t} = A_{i,t} + α·|A_{i,t}| if t ∈ S_i (planning token), else A_{i,t}; α = 0.2.

    For A > 0 a planning token gets (1 + α)·A, for A < 0 it gets (1 − α)·A (less blame), execution tokens keep A.
    ``params.planning_mask`` [B, T] marks S_i (see ``credo.analysis.strategic_grams.apply_hicra``); it is a
    constant, no gradient flows through it. ``segment_ids`` is unused: padding and prompt positions already carry
    A = 0 (advantages are broadcast over ``loss_mask``), so they stay 0. No public code exists; departure: the
    paper's planning set comes from semantically clustered strategic grams, credo's from exact n-gram groups.
    """
    if params is None:
        raise ValueError("hicra needs params=HicraParams(planning_mask=[B, T] bool, alpha=...)")
    mask = params.planning_mask.to(device=advantages.device, dtype=advantages.dtype)  # [B, T], 0/1
    if mask.shape != advantages.shape:
        raise ValueError(f"hicra: planning_mask {tuple(mask.shape)} must match advantages {tuple(advantages.shape)}")
    return advantages + params.alpha * advantages.abs() * mask  # [B, T]


CREDIT = {"none": identity, "hicra": hicra}
