"""The SFT warm start: cross-entropy on reference completions (prompt tokens masked out)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from credo.core.aggregation import token_mean
from credo.envs.base import Environment
from credo.models.policy import Policy
from credo.rollout.engine import encode_prompt
from credo.trainer.config import SFTConfig
from credo.trainer.logprobs import sequence_logprobs


def sft_tensors(tokenizer: Any, env: Environment, examples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `BOS prompt completion EOS` ids [N, T] and the mask of completion tokens [N, T]."""
    rows, masks = [], []
    for ex in examples:
        p = encode_prompt(tokenizer, env, ex)
        c = tokenizer.encode(env.reference_completion(ex)) + [tokenizer.eos_id]
        rows.append(p + c)
        masks.append([0.0] * len(p) + [1.0] * len(c))
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def sft(
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    cfg: SFTConfig,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `policy` in place on the environment's "sft" split; returns per-step metrics."""
    examples = env.examples("sft")
    ids, mask = sft_tensors(tokenizer, env, examples)
    images = [ex.images for ex in examples] if any(ex.images for ex in examples) else None
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    history = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=g)
        b_mask = mask[idx]
        T = int(b_mask.nonzero()[:, 1].max()) + 1  # trim padding columns
        imgs = [images[i] for i in idx.tolist()] if images is not None else None
        lp, _ = sequence_logprobs(policy, ids[idx, :T], images=imgs)
        loss = token_mean(-lp, b_mask[:, :T])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        m = {"sft/loss": loss.item(), "sft/grad_norm": float(gnorm), "sft/lr": opt.param_groups[0]["lr"]}
        history.append(m)
        if on_step is not None:
            on_step(step, m)
    return history


def warm_start_model(cfg: Any, env: Environment | None = None) -> tuple[Any, Any, list[dict[str, float]]]:
    """`credo sft`: a fresh TinyLM/TinyVLM (or the model at `model.path`) trained by SFT on the env's "sft" split.

    `cfg` is a full `Config`; returns (policy, tokenizer, per-step metrics)."""
    from credo.envs import make_env
    from credo.models import build_policy, load_policy

    torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    policy, tok = load_policy(cfg.model.path, cfg.model) if cfg.model.path else build_policy(cfg.model)
    history = sft(policy, tok, env or make_env(cfg.env), cfg.sft, cfg.run.seed)
    return policy, tok, history
