"""The policy update: PPO epochs × minibatches over one rollout batch, with an optional KL to a reference.

Memory and work, decided the same way on every rank (so that data-parallel ranks can agree on them later):
- Each minibatch runs as micro-batches of at most `rl.max_tokens_per_microbatch` padded tokens
  (`n_microbatches`, a function of the minibatch's shape only), gradients accumulated. Each micro-batch's loss
  is weighted by the minibatch's aggregation weights (`loss_weights`), so the accumulated gradient is the
  one-batch gradient for every aggregation mode: normalisers are the minibatch's totals, not the micro-batch's.
- A minibatch without a learning signal (all advantages zero on its trained tokens, no KL or NLL term) runs
  neither a backward pass nor an optimizer step (a zero-gradient AdamW step would still move the weights by its
  momentum), counted in `loss/skipped_zero_adv`.
- Log-probs are scored on the trained tokens only, with the LM head in chunks (`trainer.logprobs`).
- Data parallel (`torchrun`, `trainer.distributed`): each rank holds its share of the global batch; minibatches
  are drawn from the global batch by one shared permutation, each rank's loss is normalised by the global count of
  its aggregation mode (`core.aggregation.denominator`, all-reduced), the zero-advantage skip and the non-finite
  skip are decided over all ranks, and a rank with fewer micro-batches than another runs zero-weight ghost
  micro-batches (`ghost_microbatch`), so every rank takes the same collectives and optimizer steps and one update
  equals one process's update of the global batch.
- Host memory (glibc, `trainer.host_memory`): outside the forward and backward passes every buffer above 128 KiB is
  mmapped and returned when freed (`return_freed_memory`: long-lived tensors never pin a fragmented heap); inside
  them (`reuse_freed_memory`) the heap serves buffers up to 32 MiB, so each layer's activations reuse the memory
  the previous one freed instead of new pages (SmolLM2-135M, 64 rows: ~1 M page faults and 10-13 s of kernel time
  per update → 0.05-0.07 M and 3 s), and the free heap is handed back after.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from credo.analysis.strategic_grams import entropy_split
from credo.core.aggregation import aggregate, denominator
from credo.core.kl import KL_ESTIMATORS
from credo.core.losses import LOSSES, LossParams
from credo.core.stats import logprob_diff, masked_mean, truncated_is_weights
from credo.data import Batch
from credo.models.policy import Policy
from credo.rollout.rethink import rethink_nll_loss
from credo.trainer import distributed as dist
from credo.trainer.config import RLConfig
from credo.trainer.host_memory import release_free_heap, return_freed_memory, reuse_freed_memory
from credo.trainer.logprobs import sequence_logprobs


def _trim(batch: Batch) -> Batch:
    """Drop padding columns beyond the longest row (an empty batch stays as it is)."""
    return batch.columns(int(batch.attention_mask.sum(1).max())) if len(batch) else batch


def _warmup(optimizer: torch.optim.Optimizer, cfg: RLConfig) -> None:
    """Linear warm-up of the learning rate, keyed on the optimizer's own step count (so resume is exact)."""
    state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
    done = int(state["step"]) if "step" in state else 0
    scale = min(1.0, (done + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * scale


def adamw(params: list[torch.Tensor], **kwargs: object) -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `params` (keyword arguments passed through), with PyTorch's fused kernel (one pass
    per parameter; transformers' Trainer default `adamw_torch_fused` for torch >= 2.8) when every parameter is a
    plain floating tensor on a CPU or CUDA device; otherwise (FSDP2's DTensors) PyTorch's default implementation.
    On SmolLM2-135M (2 cores): a step took 0.14 s fused against 0.82-1.1 s for the default per-tensor loop."""
    from torch.distributed.tensor import DTensor

    fused = bool(params) and all(type(p) is torch.nn.Parameter and not isinstance(p, DTensor) and p.is_floating_point()
                                 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def n_microbatches(rows: int, padded_len: int, max_tokens: int) -> int:
    """Micro-batches for a minibatch of `rows` × `padded_len` tokens under a budget of `max_tokens` padded tokens
    per micro-batch (0: no budget, one micro-batch). A row longer than the budget is a micro-batch of its own.
    A function of the shape only: ranks agree by all-reducing its maximum."""
    if max_tokens <= 0 or rows * padded_len <= max_tokens:
        return 1
    per = max(1, max_tokens // max(1, padded_len))  # rows per micro-batch
    return -(-rows // per)


def microbatch_rows(batch: Batch, max_tokens: int) -> list[torch.Tensor]:
    """Row indices of each micro-batch (`n_microbatches` of them), rows sorted by length (longest first) so
    that each micro-batch, trimmed to its own longest row, carries little padding."""
    lengths = batch.attention_mask.sum(1)  # [b]
    n = n_microbatches(len(batch), batch.input_ids.shape[1], max_tokens)
    order = torch.argsort(lengths, descending=True, stable=True)
    return list(torch.tensor_split(order, n))


def empty_batch() -> Batch:
    """A batch of no rows: what a data-parallel rank whose samples were all dropped brings to the update."""
    z = torch.zeros(0, 1)
    return Batch(input_ids=z.long(), attention_mask=z.bool(), loss_mask=z, segment_ids=z.long(), old_logprobs=z,
                 advantages=z, group_ids=torch.zeros(0, dtype=torch.long), rewards=torch.zeros(0))


def ghost_microbatch(batch: Batch) -> Batch:
    """A one-row micro-batch that trains no token (batch's first row, or two pad tokens when it has none): a rank
    with fewer micro-batches than another runs its forward and backward with zero weights, so that every rank takes
    part in the same FSDP collectives and adds nothing to the gradient."""
    if len(batch):
        row = _trim(batch.select(torch.zeros(1, dtype=torch.long)))
    else:
        z = torch.zeros(1, 2)
        row = Batch(input_ids=z.long(), attention_mask=z.bool() | True, loss_mask=z, segment_ids=z.long(),
                    old_logprobs=z, advantages=z, group_ids=torch.zeros(1, dtype=torch.long), rewards=torch.zeros(1))
    zero = torch.zeros_like(row.loss_mask)
    return dataclasses.replace(row, loss_mask=zero, advantages=zero, token_masks={}, planning_mask=None)


def aligned_microbatches(batch: Batch, max_tokens: int) -> list[torch.Tensor | None]:
    """`microbatch_rows` (empty ones dropped), then `None` (a ghost micro-batch) until the list is as long as on
    the rank with most micro-batches: the same number of forwards and backwards on every rank."""
    rows = [r for r in microbatch_rows(batch, max_tokens) if len(r)]
    n = int(dist.all_reduce([float(len(rows))], "max")[0])
    return rows + [None] * (n - len(rows))


def loss_weights(fn: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The weights w [b, T] of a loss that is linear in a per-token tensor x [b, T]: fn(x) = Σ w ⊙ x. Every
    aggregation mode (`core.aggregation`) and the rethink NLL are linear in the per-token loss / log-prob, so a
    micro-batch contributes Σ w[rows] ⊙ x[rows] and the micro-batches sum to fn over the whole minibatch."""
    x = torch.zeros(shape, requires_grad=True)
    return torch.autograd.grad(fn(x), x, allow_unused=True, materialize_grads=True)[0]  # [b, T]


def _share_prefix(cfg: RLConfig) -> str:
    """The `sequence_logprobs` mode of `rl.share_prefix`: "auto" in one process; "pack" under data parallelism,
    whose packed forward is one ordinary forward (FSDP2 gathers a layer's shards at each of its forwards, and the
    "cache" way runs the layers twice, so ranks whose micro-batches differ would issue different collectives)."""
    if not cfg.share_prefix:
        return "off"
    return "pack" if dist.is_distributed() else "auto"


def has_signal(batch: Batch, cfg: RLConfig, ref_policy: Policy | None, nll_coef: float) -> bool:
    """Whether a minibatch has any gradient to give: a non-zero advantage on a trained token, a KL term or a
    rethink NLL term. (Under data parallelism, all-reduce it with `any` so every rank takes the same branch.)"""
    if cfg.kl_coef > 0 and ref_policy is not None:
        return True
    if nll_coef > 0 and "nll" in batch.token_masks and bool(batch.token_masks["nll"].any()):
        return True
    return bool(((batch.advantages != 0) & (batch.loss_mask != 0)).any())


def low_precision(policy: Policy) -> bool:
    """Whether the policy computes in a dtype other than float32 (`HFPolicy.compute_dtype`): its sampler's
    log-probs (bf16 engine) then differ from the trainer's (autocast forward), so π_old is recomputed."""
    return getattr(policy, "compute_dtype", torch.float32) != torch.float32


@torch.no_grad()
def recompute_old_logprobs(policy: Policy, batch: Batch, cfg: RLConfig) -> Batch:
    """The batch with `old_logprobs` [B, T] recomputed by the trainer's own forward (no gradient), on the trained
    tokens (0 elsewhere), micro-batched like the update. Used when the rollout came from another engine or
    dtype than the trainer's (`rl.recompute_old_logprobs`, or a compute dtype below float32), so that the PPO
    ratio is 1 at the first minibatch of on-policy data (verl recomputes π_old the same way)."""
    device = next(iter(policy.parameters())).device
    old = torch.zeros_like(batch.old_logprobs)
    for rows in aligned_microbatches(batch, cfg.max_tokens_per_microbatch):
        mb = (_trim(batch.select(rows)) if rows is not None else ghost_microbatch(batch)).to(device)
        lp, _ = sequence_logprobs(policy, mb.input_ids, cfg.temperature, False, mb.images, mb.loss_mask,
                                  cfg.logprob_chunk, _share_prefix(cfg), cfg.prefix_pack_tokens)
        if rows is not None:
            old[rows, : lp.shape[1]] = lp.to(old.device)
    return dataclasses.replace(batch, old_logprobs=old)


def _microbatch_loss(
    policy: Policy,
    mb: Batch,
    cfg: RLConfig,
    params: LossParams,
    weights: tuple[torch.Tensor, torch.Tensor | None],
    ref_policy: Policy | None,
    nll_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the minibatch loss (scalar, differentiable), its log-probs and entropies [b, T]
    (detached) and its metrics (token means over the micro-batch)."""
    w_loss, w_nll = weights
    positions = mb.loss_mask != 0  # [b, T]: the tokens any term reads
    if w_nll is not None:
        positions = positions | (w_nll != 0)
    logprobs, entropy = sequence_logprobs(policy, mb.input_ids, cfg.temperature, True, mb.images, positions,
                                          cfg.logprob_chunk, _share_prefix(cfg),
                                          cfg.prefix_pack_tokens)  # [b, T], [b, T]
    loss_tok, m = LOSSES[cfg.loss](logprobs, mb.old_logprobs, mb.advantages, mb.loss_mask, params)  # [b, T]
    metrics = {f"loss/{k}": float(v) for k, v in m.items()}
    if cfg.kl_coef > 0 and ref_policy is not None:
        ref_logprobs, _ = sequence_logprobs(ref_policy, mb.input_ids, cfg.temperature, images=mb.images,
                                            positions=mb.loss_mask, chunk=cfg.logprob_chunk,
                                            share_prefix=_share_prefix(cfg), pack_tokens=cfg.prefix_pack_tokens)
        kl = KL_ESTIMATORS[cfg.kl_estimator](logprobs, ref_logprobs.detach())  # [b, T]
        loss_tok = loss_tok + cfg.kl_coef * kl
        metrics["loss/kl"] = float(masked_mean(kl.detach(), mb.loss_mask))
    loss = (loss_tok * w_loss).sum()
    if w_nll is not None:
        nll = -(logprobs * w_nll).sum()  # this micro-batch's share of rethink_nll_loss (a minus-weighted sum)
        loss = loss + nll_coef * nll
        metrics["loss/rethink_nll"] = float(nll.detach())
    metrics["loss/entropy"] = float(masked_mean(entropy, mb.loss_mask))
    return loss, logprobs.detach(), entropy, metrics


def _minibatch_step(
    policy: Policy,
    mb: Batch,
    cfg: RLConfig,
    params: LossParams,
    ref_policy: Policy | None,
    nll_coef: float,
) -> tuple[float, dict[str, float], torch.Tensor]:
    """Forward and backward of one minibatch as micro-batches (gradients accumulate in `.grad`); returns the
    loss, the metrics (micro-batch metrics weighted by their trained tokens; loss/rethink_nll summed) and the
    detached log-probs [b, T]. Data parallel: `mb` is this rank's share of the minibatch, its weights scaled to
    the global normaliser (`dist.global_fraction`), the returned loss this rank's share of the global loss."""
    mask = mb.loss_mask.cpu()
    w_loss = loss_weights(lambda x: aggregate(x, mask, cfg.aggregation, cfg.max_new_tokens),
                          mb.loss_mask.shape).to(mb.loss_mask.device)  # [b, T]
    if dist.is_distributed():  # N_r / D_r → N_r / Σ D
        w_loss = w_loss * dist.global_fraction(denominator(mask, cfg.aggregation, cfg.max_new_tokens))
    w_nll = None
    if nll_coef > 0 and "nll" in mb.token_masks:
        nll_mask = mb.token_masks["nll"].float().cpu()
        w_nll = -loss_weights(lambda x: rethink_nll_loss(x, nll_mask), nll_mask.shape).to(mb.loss_mask.device)
    if nll_coef > 0 and dist.is_distributed():  # every rank joins the NLL's all-reduce, with or without the mask
        share = dist.global_fraction(float(nll_mask.sum()) if w_nll is not None else 0.0)
        w_nll = w_nll * share if w_nll is not None else None
    logprobs, entropy = torch.zeros_like(mb.old_logprobs), torch.zeros_like(mb.old_logprobs)
    total = 0.0
    sums: dict[str, float] = {}
    n_tokens = float(mb.loss_mask.sum().clamp_min(1))
    for rows in aligned_microbatches(mb, cfg.max_tokens_per_microbatch):
        if rows is None:  # a ghost: the collectives of a micro-batch, zero gradient
            ghost = ghost_microbatch(mb).to(mb.loss_mask.device)
            zero = torch.zeros_like(ghost.loss_mask)
            _microbatch_loss(policy, ghost, cfg, params, (zero, None), ref_policy, nll_coef)[0].backward()
            continue
        micro = _trim(mb.select(rows))
        T = micro.input_ids.shape[1]
        ws = (w_loss[rows, :T], None if w_nll is None else w_nll[rows, :T])
        loss, lp, ent, m = _microbatch_loss(policy, micro, cfg, params, ws, ref_policy, nll_coef)
        loss.backward()
        total += float(loss.detach())
        logprobs[rows, :T], entropy[rows, :T] = lp, ent
        share = float(micro.loss_mask.sum()) / n_tokens
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + (v if k == "loss/rethink_nll" else share * v)
    if mb.planning_mask is not None:
        sums.update(entropy_split(entropy, mb.planning_mask, mb.loss_mask))
    dist.sync_replicated_grads(policy)  # an unsharded (LoRA) policy under torchrun: its gradients summed over ranks
    return total, sums, logprobs


def policy_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: RLConfig,
    generator: torch.Generator,
    ref_policy: Policy | None = None,
    nll_coef: float = 0.0,
) -> dict[str, float]:
    """Run `cfg.ppo_epochs` passes of `cfg.minibatches` optimizer steps; return averaged `loss/` metrics and the
    sampler/trainer mismatch `rollout/logprob_diff` (mean |Δ log p|) and `rollout/logprob_kl` (k3).

    A minibatch whose loss or gradient is not finite is skipped (no optimizer step) and counted in
    `loss/skipped`; the caller decides when too many skips must stop the run. A minibatch without a learning
    signal (`has_signal`) is skipped without a forward pass, counted in `loss/skipped_zero_adv`.

    π_old: the sampler's log-probs, or the trainer's own (`recompute_old_logprobs`) when `rl.recompute_old_logprobs`
    or `rl.tis_cap` is set or the policy computes below float32. With `rl.tis_cap` = C > 0 each token's policy loss
    is weighted by min(π_old / π_sampler, C) (`core.stats.truncated_is_weights`; applied to the advantages, which
    every loss in `LOSSES` is positively homogeneous in), logged as `rollout/tis_weight` and `rollout/tis_capped`.
    The mismatch is measured where π_θ = π_old exactly: on the recomputed batch, else on the first trained minibatch
    before any optimizer step (exact for on-policy data; SSR's replayed samples carry an older policy's log-probs).

    Data parallel (module docstring): `batch` is this rank's share (possibly `empty_batch()`); the returned loss
    metrics are the same on every rank (loss/policy the global loss, others token-weighted over ranks).

    Token masks the batch carries: "nll" adds `nll_coef` × the mean NLL over its tokens (Forced Rethinking's
    auxiliary loss on positive rethinking samples); `planning_mask` splits the logged token entropy into planning
    and execution tokens (HICRA's diagnostic).
    """
    return_freed_memory()
    params = LossParams(eps_low=cfg.eps_low, eps_high=cfg.eps_high, clip_ratio_c=cfg.clip_ratio_c)
    B = len(batch)
    offset, B_all = dist.row_offset(B)  # this rank's rows of the global batch; (0, B) in one process
    device = next(iter(policy.parameters())).device
    n_mb = max(1, min(cfg.minibatches, B_all))
    sums: dict[str, float] = {}
    n_steps = skipped = skipped_zero = 0
    n_tokens = 0.0  # trained tokens of this rank's stepped minibatches: the weight of its metrics
    diff: dict[str, float] = {}
    recompute = cfg.recompute_old_logprobs or cfg.tis_cap > 0 or low_precision(policy)
    if recompute and dist.any_true(has_signal(batch, cfg, ref_policy, nll_coef)):
        batch, diff = _trainer_old_logprobs(policy, batch, cfg)
    for _ in range(cfg.ppo_epochs):
        perm = dist.shared_permutation(B_all, generator)
        for idx in perm.chunk(n_mb):
            mb = _trim(batch.select(dist.local_rows(idx, offset, B))).to(device)
            if not dist.any_true(has_signal(mb, cfg, ref_policy, nll_coef)):
                skipped_zero += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            with reuse_freed_memory():
                loss_value, metrics, logprobs = _minibatch_step(policy, mb, cfg, params, ref_policy, nll_coef)
            if not diff and n_steps == 0:  # θ is still θ_old: the sampler's log-probs against the trainer's
                diff = _diff_metrics(logprobs, mb.old_logprobs, mb.loss_mask)
            if dist.is_distributed():  # the global loss: the ranks' shares add up
                loss_value = dist.all_reduce([loss_value])[0]
            grad_norm = dist.clip_grad_norm(policy.parameters(), cfg.max_grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            _warmup(optimizer, cfg)
            optimizer.step()
            n_steps += 1
            n_tokens += float(mb.loss_mask.sum())
            metrics["loss/policy"] = loss_value
            metrics["loss/grad_norm"] = grad_norm
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
    optimizer.zero_grad(set_to_none=True)
    release_free_heap()  # the gradients, allocated in the heap by the backward passes
    out = {k: v / max(1, n_steps) for k, v in sums.items()}
    out["loss/skipped"] = float(skipped)
    out["loss/skipped_zero_adv"] = float(skipped_zero)
    out["loss/optimizer_steps"] = float(n_steps)
    return dist.reduce_metrics({**out, **diff}, n_tokens, sums=("loss/rethink_nll",))


def _trainer_old_logprobs(policy: Policy, batch: Batch, cfg: RLConfig) -> tuple[Batch, dict[str, float]]:
    """The batch with π_old recomputed by the trainer (truncated-IS weighted with `rl.tis_cap`) and the sampler /
    trainer mismatch metrics."""
    sampler_logprobs = batch.old_logprobs
    with reuse_freed_memory():
        batch = recompute_old_logprobs(policy, batch, cfg)
    diff = _diff_metrics(batch.old_logprobs, sampler_logprobs, batch.loss_mask)
    if cfg.tis_cap > 0:
        batch, tis = _truncated_is(batch, sampler_logprobs, cfg.tis_cap)
        diff.update(tis)
    return batch, diff


def _truncated_is(batch: Batch, sampler_logprobs: torch.Tensor, cap: float) -> tuple[Batch, dict[str, float]]:
    """The batch with its advantages [B, T] weighted by the TIS weights min(π_old / π_sampler, cap) (π_old: the
    batch's recomputed `old_logprobs`), and the weights' mean and capped share on the trained tokens."""
    w = truncated_is_weights(batch.old_logprobs, sampler_logprobs, cap)  # [B, T]
    mask = batch.loss_mask
    capped = (batch.old_logprobs - sampler_logprobs >= math.log(cap)).float()  # [B, T]
    metrics = {"rollout/tis_weight": float(masked_mean(w, mask)),
               "rollout/tis_capped": float(masked_mean(capped, mask))}
    return dataclasses.replace(batch, advantages=batch.advantages * w), metrics


def _diff_metrics(logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    abs_diff, kl = logprob_diff(logprobs.cpu(), sampler_logprobs.cpu(), mask.cpu())
    return {"rollout/logprob_diff": float(abs_diff), "rollout/logprob_kl": float(kl)}
