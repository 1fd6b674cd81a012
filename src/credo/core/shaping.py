"""Reward shaping maths computed from the rollout itself (not the verifier): per-sample values [B].

Only the formula lives here; it reaches the reward as a term of `credo.rewards.terms.TERMS` (`Overlong`, weighted
by `term_weights` and logged as `reward/overlong`), as every other reward part does (Pixel Reasoner's curiosity
bonus: `credo.rewards.curiosity`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_len: int, cache_len: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, §3.4).

    R_length(L) = 0 if L ≤ L_max − L_cache; (L_max − L_cache − L) / L_cache if L_max − L_cache < L ≤ L_max;
    −1 if L > L_max; times ``factor`` (verl's ``penalty_factor``, 1.0). Paper: L_max = 20480, L_cache = 4096.
    ``cache_len = 0`` turns it off (all zeros). Shapes: lengths [B] (completion tokens) → [B] float.
    Departure: verl's ``DAPORewardManager`` computes min(−(L − (L_max − L_cache)) / L_cache, 0) without the −1
    floor; the two agree for every L ≤ L_max, which is all a generation capped at L_max can produce.
    """
    L = lengths.to(torch.float32)  # [B]
    if cache_len <= 0:
        return torch.zeros_like(L)  # [B]
    expected = max_len - cache_len
    penalty = ((expected - L) / cache_len).clamp(min=-1.0, max=0.0)  # [B]
    return factor * penalty  # [B]
