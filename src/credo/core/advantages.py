"""Group-baseline advantage estimators: rewards [B], group_ids [B] → advantages [B].

``group_ids`` are arbitrary integers (need not be contiguous or sorted); samples with the same id were
generated from the same prompt. All estimators are vectorised (no Python loop over groups) and give 0 to
a sample that is alone in its group.

Constant groups. A group whose rewards span at most ``CONSTANT_RTOL · max(1, |mean_g(r)|)`` (1e-6 relative, 1e-6
absolute below |mean| = 1) is constant: every estimator gives exactly 0 to each of its samples, and
``informative_groups`` classes it uninformative. Without this, float residue of the group mean (0.7 summed eight
times in float32 is not 5.6) becomes a signed advantage on every sample, and GRPO's std division amplifies it
(eight rewards 0.7 gave +0.056 each). The statistics are computed in float64 and returned in the rewards' float
dtype (float32 for integer rewards).
"""

from __future__ import annotations

import torch
from torch import Tensor

CONSTANT_RTOL = 1e-6
"""A group is constant when max_g(r) − min_g(r) ≤ CONSTANT_RTOL · max(1, |mean_g(r)|)."""


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids to dense indices: (inverse [B] with values in [0, G), G)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [B]
    return inverse, uniq.numel()


def _group_sum(x: Tensor, inverse: Tensor, n_groups: int) -> Tensor:
    """Per-sample sum of ``x`` over the sample's group: Σ_{j∈g(i)} x_j, [B]."""
    sums = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)  # [G]
    return sums[inverse]  # [B]


def _group_reduce(x: Tensor, inverse: Tensor, n_groups: int, reduce: str) -> Tensor:
    """Per-sample max or min (``reduce`` = "amax" / "amin") of ``x`` over the sample's group, [B]; NaN propagates."""
    out = torch.zeros(n_groups, dtype=x.dtype, device=x.device)
    out = out.scatter_reduce(0, inverse, x, reduce=reduce, include_self=False)  # [G]
    return out[inverse]  # [B]


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return rewards.dtype if rewards.is_floating_point() else torch.float32


def _group_span(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(span_g = max_g − min_g, tolerance CONSTANT_RTOL · max(1, |mean_g|)), both float64 [B], per sample's group."""
    v = values.to(torch.float64)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(v), inverse, n_groups)  # [B]
    mean = _group_sum(v, inverse, n_groups) / count  # [B]
    span = _group_reduce(v, inverse, n_groups, "amax") - _group_reduce(v, inverse, n_groups, "amin")  # [B]
    return span, CONSTANT_RTOL * mean.abs().clamp_min(1.0)  # [B], [B]


def constant_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Whether each sample's group is constant: span_g(r) ≤ 1e-6 · max(1, |mean_g(r)|). bool [B].

    Singletons are constant (span 0). A group with a NaN or ±inf reward is not constant (its span is NaN), so the
    estimators do not hide the non-finite value behind a 0.
    """
    span, tol = _group_span(rewards, group_ids)  # [B], [B]
    return span <= tol  # [B]


def informative_groups(values: Tensor, group_ids: Tensor) -> Tensor:
    """Whether each sample's group can teach anything: span_g(v) > 1e-6 · max(1, |mean_g(v)|). bool [B].

    The one test of "this group has a non-zero advantage" that DAPO dynamic sampling, SSR and the
    ``adv/nonzero_groups`` metric share. ``values`` are the rewards, or the sequence advantages an estimator of
    ``ADVANTAGES`` made from them: both give the same classes (up to rounding at the boundary), because a constant
    reward group has advantages exactly 0, and a non-constant one (span s > 1e-6·max(1, |mean|)) has advantages
    spanning s (Dr.GRPO), n/(n−1)·s (RLOO) or s/(std + 1e-6) > 1/2 (GRPO, std ≤ s), all above 1e-6, the
    tolerance around mean 0.
    Groups of one sample and groups holding a NaN or ±inf are uninformative. Shapes: [B], [B] → bool [B].
    """
    span, tol = _group_span(values, group_ids)  # [B], [B]
    return span > tol  # [B]


def _finish(adv: Tensor, rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Exactly 0 on constant groups (see the module docstring), cast to the rewards' float dtype. [B]."""
    adv = torch.where(constant_groups(rewards, group_ids), torch.zeros_like(adv), adv)  # [B]
    return adv.to(_out_dtype(rewards))  # [B]


def grpo(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (DeepSeekMath, arXiv 2402.03300, §4.1.2).

    A_i = (r_i − mean_g(r)) / (std_g(r) + eps), std the unbiased (n − 1) group standard deviation,
    as ``torch.std``'s default and verl. Groups of size 1 give 0 (std undefined there); constant groups give
    exactly 0 (module docstring).
    """
    r = rewards.to(torch.float64)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    centred = r - _group_sum(r, inverse, n_groups) / count  # [B]
    var = _group_sum(centred**2, inverse, n_groups) / (count - 1).clamp_min(1)  # [B]
    adv = centred / (var.sqrt() + eps)  # [B]
    return _finish(torch.where(count > 1, adv, torch.zeros_like(adv)), rewards, group_ids)  # [B]


def dr_grpo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dr.GRPO advantage (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    A_i = r_i − mean_g(r): GRPO without the std division. Also the TIGER-Lab OpenRLHF "group" estimator.
    Constant groups give exactly 0 (module docstring).
    """
    r = rewards.to(torch.float64)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    return _finish(r - _group_sum(r, inverse, n_groups) / count, rewards, group_ids)  # [B]


def rloo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO leave-one-out advantage (Ahmadian et al., arXiv 2402.14740).

    A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j = n/(n−1) · (r_i − mean_g(r)); groups of size 1 give 0, constant groups
    exactly 0 (module docstring).
    """
    r = rewards.to(torch.float64)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    others_mean = (_group_sum(r, inverse, n_groups) - r) / (count - 1).clamp_min(1)  # [B]
    adv = r - others_mean  # [B]
    return _finish(torch.where(count > 1, adv, torch.zeros_like(adv)), rewards, group_ids)  # [B]


def to_tokens(advantages: Tensor, loss_mask: Tensor) -> Tensor:
    """Broadcast sequence advantages to tokens: A_{i,t} = A_i · m_{i,t} (outcome reward, γ = 1).

    Shapes: advantages [B], loss_mask [B, T] → [B, T] float.
    """
    adv = advantages if advantages.is_floating_point() else advantages.float()  # [B]
    return adv[:, None] * loss_mask.to(adv.dtype)  # [B, T]


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
