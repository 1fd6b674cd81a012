"""Pixel Reasoner's curiosity-driven reward (arXiv 2505.15966 §3.3; methods.md section 2.2-2.3).

An untrained model avoids a new tool; the bonus pays rollouts that use it while few rollouts of their group do,
and a penalty keeps the number of operations small. Pure functions on tensors (torch only), one group [G] or a
batch with group ids [B].
"""

from __future__ import annotations

import torch

VARIANTS = ("paper", "code")


def curiosity_bonus(
    used_tool: torch.Tensor,
    n_ops: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.05,
    H: float = 0.3,
    N: float = 1.0,
    variant: str = "paper",
    video: bool = False,
    max_bonus: float = 0.25,
) -> torch.Tensor:
    """The curiosity term to add to the outcome reward r of each rollout of ONE group: r' = r + bonus. [G]

    paper (= verl-tool `reward_manager/pixel_reasoner.py`):
        bonus = α·max(H − RaPR, 0)·1[used tool] + β·min(N − n_ops, 0),   RaPR = mean_g 1[used tool]
    with H = 0.3, N = 1, α = 0.5, β = 0.05; `used_tool` = ≥ 1 valid visual operation, `n_ops` = valid operations.

    code (OpenRLHF `experience_maker.py`, as shipped): for rollouts with n_ops > 0 only,
        bonus = max(H − RaPR, 0) / d / RaPR · max_bonus − β·(n_ops − N),   d = 1.5 (video) or 2.0 (image)
    with max_bonus = 0.25 ("the maximum curiosity is 0.25"), β = 0.05, N = 1; α is not used. There RaPR and
    n_ops count every turn that ended in a tool call, failed ones included: pass `used_tool = n_ops > 0` with
    those counts. The release's zeroing of a correct reward when the last turn had an unfixed tool error acts
    on r, not on the bonus, and is not done here.
    """
    used = used_tool.bool()  # [G]
    n = n_ops.float()  # [G]
    rapr = used.float().mean()
    if variant == "paper":
        curiosity = (H - rapr).clamp_min(0.0) * used.float()  # [G]
        penalty = (N - n).clamp_max(0.0)  # [G]
        return alpha * curiosity + beta * penalty
    if variant == "code":
        d = 1.5 if video else 2.0
        c = (H - rapr).clamp_min(0.0) / d / rapr.clamp_min(1e-12) * max_bonus
        return torch.where(used, c - beta * (n - N), torch.zeros_like(n))  # [G]
    raise ValueError(f"curiosity: unknown variant {variant!r} (expected one of {VARIANTS})")


def count_ops(n_valid: list[int], n_errors: list[int], variant: str = "paper") -> torch.Tensor:
    """The n_ops each variant counts, per rollout [B]: the paper form (verl-tool's `num_valid_action`) counts
    valid operations only; the released code's `ncall` counts every turn that ended in a tool call, failed ones
    included (`Sample.n_tool_calls` + `Sample.n_tool_errors`)."""
    if variant not in VARIANTS:
        raise ValueError(f"curiosity: unknown variant {variant!r} (expected one of {VARIANTS})")
    extra = n_errors if variant == "code" else [0] * len(n_valid)
    return torch.tensor([v + e for v, e in zip(n_valid, extra, strict=True)], dtype=torch.float)


def curiosity_rewards(
    rewards: torch.Tensor, used_tool: torch.Tensor, n_ops: torch.Tensor, group_ids: torch.Tensor, **kw: float | str
) -> torch.Tensor:
    """r' = r + curiosity_bonus(group) for a batch of groups: rewards, used_tool, n_ops, group_ids [B] → [B]."""
    out = rewards.clone().float()  # [B]
    for g in group_ids.unique():
        m = group_ids == g
        out[m] += curiosity_bonus(used_tool[m], n_ops[m], **kw)  # type: ignore[arg-type]
    return out
