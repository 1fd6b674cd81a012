"""The policy update: PPO epochs × minibatches over one rollout batch, with an optional KL to a reference."""

from __future__ import annotations

import math

import torch

from credo.analysis.strategic_grams import entropy_split
from credo.core.aggregation import aggregate
from credo.core.kl import KL_ESTIMATORS
from credo.core.losses import LOSSES, LossParams
from credo.core.stats import masked_mean
from credo.data import Batch
from credo.models.policy import Policy
from credo.rollout.rethink import rethink_nll_loss
from credo.trainer.config import RLConfig
from credo.trainer.logprobs import sequence_logprobs


def _trim(batch: Batch) -> Batch:
    """Drop padding columns beyond the longest row."""
    return batch.columns(int(batch.attention_mask.sum(1).max()))


def _warmup(optimizer: torch.optim.Optimizer, cfg: RLConfig) -> None:
    """Linear warm-up of the learning rate, keyed on the optimizer's own step count (so resume is exact)."""
    state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
    done = int(state["step"]) if "step" in state else 0
    scale = min(1.0, (done + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * scale


def policy_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: RLConfig,
    generator: torch.Generator,
    ref_policy: Policy | None = None,
    nll_coef: float = 0.0,
) -> dict[str, float]:
    """Run `cfg.ppo_epochs` passes of `cfg.minibatches` optimizer steps; return averaged `loss/` metrics.

    A minibatch whose loss or gradient is not finite is skipped (no optimizer step) and counted in
    `loss/skipped`; the caller decides when too many skips must stop the run.

    Token masks the batch carries: "nll" adds `nll_coef` × the mean NLL over its tokens (Forced Rethinking's
    auxiliary loss on positive rethinking samples); "planning" splits the logged token entropy into planning
    and execution tokens (HICRA's diagnostic).
    """
    params = LossParams(eps_low=cfg.eps_low, eps_high=cfg.eps_high, clip_ratio_c=cfg.clip_ratio_c)
    loss_fn = LOSSES[cfg.loss]
    kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
    B = len(batch)
    device = next(iter(policy.parameters())).device
    n_mb = max(1, min(cfg.minibatches, B))
    sums: dict[str, float] = {}
    n_steps = skipped = 0
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=generator)
        for idx in perm.chunk(n_mb):
            mb = _trim(batch.select(idx)).to(device)
            logprobs, entropy = sequence_logprobs(policy, mb.input_ids, cfg.temperature, True, mb.images)
            loss_tok, m = loss_fn(logprobs, mb.old_logprobs, mb.advantages, mb.loss_mask, params)  # [b, T]
            metrics = {f"loss/{k}": float(v) for k, v in m.items()}
            if cfg.kl_coef > 0 and ref_policy is not None:
                with torch.no_grad():
                    ref_logprobs, _ = sequence_logprobs(ref_policy, mb.input_ids, cfg.temperature, images=mb.images)
                kl = kl_fn(logprobs, ref_logprobs)  # [b, T]
                loss_tok = loss_tok + cfg.kl_coef * kl
                metrics["loss/kl"] = float(masked_mean(kl.detach(), mb.loss_mask))
            loss = aggregate(loss_tok, mb.loss_mask, cfg.aggregation, norm_len=cfg.max_new_tokens)
            if nll_coef > 0 and "nll" in mb.token_masks:
                nll = rethink_nll_loss(logprobs, mb.token_masks["nll"].to(logprobs.dtype))
                loss = loss + nll_coef * nll
                metrics["loss/rethink_nll"] = float(nll.detach())
            if "planning" in mb.token_masks:
                metrics.update(entropy_split(entropy.detach(), mb.token_masks["planning"], mb.loss_mask))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
            loss_value = loss.item()
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            _warmup(optimizer, cfg)
            optimizer.step()
            n_steps += 1
            metrics["loss/policy"] = loss_value
            metrics["loss/grad_norm"] = grad_norm
            metrics["loss/entropy"] = float(masked_mean(entropy, mb.loss_mask))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
    out = {k: v / max(1, n_steps) for k, v in sums.items()}
    out["loss/skipped"] = float(skipped)
    out["loss/optimizer_steps"] = float(n_steps)
    return out
