"""Per-token estimators of KL(π ‖ π_ref) from samples of π (Schulman 2020, "Approximating KL divergence").

Signature: (logprobs [B, T], ref_logprobs [B, T]) → [B, T]. With r = π_ref(y)/π(y) and y ~ π:
k1 = −log r (unbiased, can be negative), k2 = ½(log r)² (biased, low variance), k3 = (r − 1) − log r
(unbiased, non-negative, low variance). Aggregate with ``aggregation.aggregate`` like a loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 (Schulman 2020): log π(y) − log π_ref(y). Unbiased for KL(π‖π_ref); negative on some samples."""
    return logprobs - ref_logprobs  # [B, T]


def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 (Schulman 2020): ½ (log π(y) − log π_ref(y))². Biased but low variance.

    Its gradient in θ (y held fixed) is ∇k2 = (log π − log π_ref)·∇log π = k1·∇log π, not ∇k1 = ∇log π. Over
    y ~ π, E[k1·∇log π] = ∇KL(π‖π_ref) while E[∇k1] = 0: on-policy, k2 as a loss term carries the KL gradient.
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [B, T]


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 (Schulman 2020): exp(log π_ref − log π) − (log π_ref − log π) − 1. Unbiased and ≥ 0.

    Departure: the log-ratio is clamped to [−20, 20] before exp (as verl's ``low_var_kl`` does) so that
    a far-off token cannot overflow; verl additionally clamps the result to ±10, which is not done here.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # [B, T]
    return torch.exp(log_ratio) - log_ratio - 1.0  # [B, T]


KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}
