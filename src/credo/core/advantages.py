"""Group-baseline advantage estimators: rewards [B], group_ids [B] → advantages [B].

``group_ids`` are arbitrary integers (need not be contiguous or sorted); samples with the same id were
generated from the same prompt. All estimators are vectorised (no Python loop over groups) and give 0 to
a sample that is alone in its group.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids to dense indices: (inverse [B] with values in [0, G), G)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [B]
    return inverse, uniq.numel()


def _group_sum(x: Tensor, inverse: Tensor, n_groups: int) -> Tensor:
    """Per-sample sum of ``x`` over the sample's group: Σ_{j∈g(i)} x_j, [B]."""
    sums = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)  # [G]
    return sums[inverse]  # [B]


def _as_float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.float()


def grpo(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (DeepSeekMath, arXiv 2402.03300, §4.1.2).

    A_i = (r_i − mean_g(r)) / (std_g(r) + eps), std the unbiased (n − 1) group standard deviation,
    as ``torch.std``'s default and verl. Groups of size 1 give 0 (std undefined there).
    """
    r = _as_float(rewards)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    centred = r - _group_sum(r, inverse, n_groups) / count  # [B]
    var = _group_sum(centred**2, inverse, n_groups) / (count - 1).clamp_min(1)  # [B]
    adv = centred / (var.sqrt() + eps)  # [B]
    return torch.where(count > 1, adv, torch.zeros_like(adv))  # [B]


def dr_grpo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dr.GRPO advantage (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    A_i = r_i − mean_g(r): GRPO without the std division. Also the TIGER-Lab OpenRLHF "group" estimator.
    """
    r = _as_float(rewards)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    return r - _group_sum(r, inverse, n_groups) / count  # [B]


def rloo(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO leave-one-out advantage (Ahmadian et al., arXiv 2402.14740).

    A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j = n/(n−1) · (r_i − mean_g(r)); groups of size 1 give 0.
    """
    r = _as_float(rewards)  # [B]
    inverse, n_groups = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), inverse, n_groups)  # [B]
    others_mean = (_group_sum(r, inverse, n_groups) - r) / (count - 1).clamp_min(1)  # [B]
    adv = r - others_mean  # [B]
    return torch.where(count > 1, adv, torch.zeros_like(adv))  # [B]


def to_tokens(advantages: Tensor, loss_mask: Tensor) -> Tensor:
    """Broadcast sequence advantages to tokens: A_{i,t} = A_i · m_{i,t} (outcome reward, γ = 1).

    Shapes: advantages [B], loss_mask [B, T] → [B, T] float.
    """
    adv = advantages if advantages.is_floating_point() else advantages.float()  # [B]
    return adv[:, None] * loss_mask.to(adv.dtype)  # [B, T]


ADVANTAGES = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
