"""Per-token policy losses: (logprobs, old_logprobs, advantages, loss_mask, params) → (loss [B, T], metrics).

Losses score tokens only; ``aggregation.aggregate`` averages them (token_mean, seq_mean_token_mean, ...).
``advantages`` are token-level [B, T] (see ``advantages.to_tokens``); a [B] tensor is broadcast over tokens.
Metrics are detached 0-dim tensors, averaged over masked tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .stats import masked_mean


@dataclass(frozen=True)
class LossParams:
    """Constants of the clipped surrogate losses. Raises ValueError on a dual-clip constant in (0, 1]."""

    # lower clip range: the ratio is clipped below at 1 − eps_low (PPO ε; DAPO ε_low = 0.2)
    eps_low: float = 0.2
    # upper clip range: the ratio is clipped above at 1 + eps_high (DAPO clip-higher uses 0.28)
    eps_high: float = 0.2
    # largest |log-ratio| allowed before exp (GSPO uses 10; a safety valve against overflow elsewhere)
    ratio_clamp: float = 10.0
    # dual-clip constant c (Ye et al. 2020; verl's clip_ratio_c, 3 there): for A < 0 the PPO loss is capped at
    # −c·A (``ppo_clip`` only); None or 0 = off, credo's default. Must exceed 1.
    clip_ratio_c: float | None = None

    def __post_init__(self) -> None:
        if self.clip_ratio_c and self.clip_ratio_c <= 1.0:
            raise ValueError(f"LossParams.clip_ratio_c must be > 1 (or None/0 for off), got {self.clip_ratio_c}")


def _token_advantages(advantages: Tensor, logprobs: Tensor) -> Tensor:
    """[B] or [B, T] advantages → [B, T], in the dtype of ``logprobs``."""
    adv = advantages.to(logprobs.dtype)
    return adv[:, None].expand_as(logprobs) if adv.dim() == 1 else adv  # [B, T]


def _clipped_surrogate(ratio: Tensor, adv: Tensor, params: LossParams) -> tuple[Tensor, Tensor]:
    """max(−A·ρ, −A·clip(ρ, 1−eps_low, 1+eps_high)) and where the clipped term strictly wins, both [B, T]."""
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - params.eps_low, 1.0 + params.eps_high)  # [B, T]
    return torch.maximum(unclipped, clipped), clipped > unclipped  # [B, T], [B, T]


def _dual_clip(loss: Tensor, adv: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """Dual clip: where A < 0, min(ℓ, −c·A); elsewhere ℓ unchanged. Returns (loss, where the cap strictly wins)."""
    cap = -adv * c  # [B, T]
    capped = (adv < 0) & (loss > cap)  # [B, T]
    return torch.where(capped, cap, loss), capped  # [B, T], [B, T]


def reinforce(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, params: LossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE / vanilla policy gradient (Williams 1992), on-policy.

    ℓ_{i,t} = −A_{i,t} · log π_θ(y_{i,t}); its gradient is −A ∇log π. ``old_logprobs`` and ``params`` are
    unused (no importance ratio, no clipping), so this is only correct for on-policy data.
    """
    adv = _token_advantages(advantages, logprobs)  # [B, T]
    return -adv * logprobs, {}  # [B, T]


def ppo_clip(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, params: LossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al., arXiv 1707.06347), with DAPO clip-higher (arXiv 2503.14476).

    ρ = exp(log π_θ − log π_old); ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high)); ε_high > ε_low is clip-higher.
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", arXiv 1912.09729),
    on when ``params.clip_ratio_c`` = c > 1: for A < 0, ℓ = min(ℓ, −c·A), so a token whose ratio ρ > c (stale
    samples) gives a bounded loss and no gradient; A ≥ 0 is unchanged. verl applies it by default with c = 3;
    credo leaves it off by default (the GRPO/DAPO papers do not use it; with one update per fresh rollout ρ stays
    near 1 and it rarely acts).
    Departures: the log-ratio is clamped to ±ratio_clamp before exp (verl clamps at ±20) so a stale sample
    cannot overflow; ``approx_kl`` is the k2 estimate ½(log π_θ − log π_old)², not verl's k1
    (the mean of log π_old − log π_θ), because k2 is non-negative and second-order accurate.
    Metrics: clip_frac (tokens where the clipped term strictly wins, as verl's pg_clipfrac), ratio_mean,
    approx_kl, and with dual clip clip_frac_lower (tokens with A < 0 where −c·A strictly wins, verl's
    pg_clipfrac_lower).
    """
    adv = _token_advantages(advantages, logprobs)  # [B, T]
    log_ratio = (logprobs - old_logprobs).clamp(-params.ratio_clamp, params.ratio_clamp)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    loss, clipped = _clipped_surrogate(ratio, adv, params)  # [B, T], [B, T]
    if params.clip_ratio_c:
        loss, capped = _dual_clip(loss, adv, params.clip_ratio_c)  # [B, T], [B, T]
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean(clipped.to(logprobs.dtype), loss_mask),
            "ratio_mean": masked_mean(ratio, loss_mask),
            "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, loss_mask),
        }
        if params.clip_ratio_c:
            metrics["clip_frac_lower"] = masked_mean(capped.to(logprobs.dtype), loss_mask)
    return loss, metrics


def gspo(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, params: LossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO, sequence-level importance ratio (Zheng et al., arXiv 2507.18071), in its token form.

    s_i = exp((1/|y_i|) Σ_t log(π_θ/π_old));  log s_{i,t} = sg[log s_i] + log π_θ(y_it) − sg[log π_θ(y_it)];
    ℓ_{i,t} = max(−A_{i,t} s_{i,t}, −A_{i,t} clip(s_{i,t}, 1−ε_low, 1+ε_high)).
    Every token of a sequence has the value s_i, while the gradient flows through each token's log π_θ.
    The paper pairs this with seq_mean_token_mean aggregation and very small ε (≈3e-4 / 4e-4).
    Departure: log s_{i,t} is clamped to ±ratio_clamp (verl clamps only above, at 10). ``clip_ratio_c`` (dual clip)
    is ignored here, as in verl's GSPO loss.
    Metrics: clip_frac (masked token mean), seq_ratio_mean (mean of s_i over sequences with ≥1 token).
    """
    adv = _token_advantages(advantages, logprobs)  # [B, T]
    seq_log_ratio = masked_mean(logprobs - old_logprobs, loss_mask, dim=-1)  # [B]
    log_s = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()  # [B, T]
    s = torch.exp(log_s.clamp(-params.ratio_clamp, params.ratio_clamp))  # [B, T]
    loss, clipped = _clipped_surrogate(s, adv, params)  # [B, T], [B, T]
    with torch.no_grad():
        seq_ratio = torch.exp(seq_log_ratio.clamp(-params.ratio_clamp, params.ratio_clamp))  # [B]
        has_tokens = (loss_mask.sum(-1) > 0).to(logprobs.dtype)  # [B]
        metrics = {
            "clip_frac": masked_mean(clipped.to(logprobs.dtype), loss_mask),
            "seq_ratio_mean": masked_mean(seq_ratio, has_tokens),
        }
    return loss, metrics


LOSSES = {"reinforce": reinforce, "ppo_clip": ppo_clip, "gspo": gspo}
