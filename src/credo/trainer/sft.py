"""The SFT warm start: cross-entropy on reference completions (prompt tokens masked out).

An environment with `reference_turns` gets multi-turn SFT: its tool-using traces are built as a multi-turn
rollout would build them (`rollout.multiturn.reference_trajectory`), with the real tool observations (crops,
frames) in the sequence and out of the loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from credo.data import InputError
from credo.envs.base import Environment
from credo.envs.tools import TOOLS, Tool
from credo.models.policy import Policy
from credo.rollout.engine import encode_prompt
from credo.rollout.multiturn import reference_trajectory
from credo.trainer import distributed as dist
from credo.trainer.config import SFTConfig
from credo.trainer.host_memory import release_free_heap, return_freed_memory, reuse_freed_memory
from credo.trainer.logprobs import sequence_logprobs


def sft_rows(
    tokenizer: Any,
    env: Environment,
    examples: list,
    tools: dict[str, Tool] | None = None,
    image_size: int = 48,
    max_images: int = 16,
    completions: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[list[Any]] | None]:
    """Right-padded rows [N, T], their loss mask [N, T] and each row's images (None when no row has any).

    Single-text references: `BOS prompt completion EOS` with `env.reference_completion(ex)` (or `completions[i]`
    when given, one per example: `self_completions`), mask 1 on the completion. Multi-turn references (without
    `completions`): when the env has `reference_turns(example) -> list[str]` (policy text turns; every turn but
    the last ends with a `</tool_call>`), the row is `rollout.multiturn.reference_trajectory`: exactly the tokens
    a multi-turn rollout writing those turns produces, with the real tool's observation (text and image
    placeholders; its images join the row's images) under mask 0."""
    rows, masks, images = [], [], []
    turns_of = getattr(env, "reference_turns", None)
    for i, ex in enumerate(examples):
        if turns_of is not None and completions is None:
            s = reference_trajectory(tokenizer, env, ex, turns_of(ex), tools, image_size, max_images)
            p, c, m = s.prompt_ids.tolist(), s.completion_ids.tolist(), s.loss_mask.tolist()
            imgs = list(s.images or [])
        else:
            p = encode_prompt(tokenizer, env, ex)
            text = completions[i] if completions is not None else env.reference_completion(ex)
            c = tokenizer.encode(text) + [tokenizer.eos_id]
            m, imgs = [1.0] * len(c), list(ex.images or [])
        rows.append(p + c)
        masks.append([0.0] * len(p) + m)
        images.append(imgs)
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask, (images if any(images) else None)


def self_completions(policy: Policy, tokenizer: Any, env: Environment, examples: list, cfg: SFTConfig,
                     seed: int, require: bool = True) -> tuple[list, list[str], dict[str, float]]:
    """Warm-start data from the model's own correct samples: rejection-sampling fine-tuning (STaR, Zelikman et
    al. 2022, arXiv 2203.14465; RFT, Yuan et al. 2023, arXiv 2308.01825), so that the warm start teaches the
    env's answer format without replacing how the model already works problems out.

    `cfg.self_samples` samples per example (temperature 1, ≤ `cfg.self_max_new_tokens` tokens, through the native
    generation backend). A sample the env's verifier accepts is kept as written; otherwise, when
    `cfg.self_verifier` names a verifier (`envs.verifiers.VERIFIERS`, e.g. `numeric`: the last number) that
    accepts it against the reference, it is kept followed by a newline and `env.reference_completion(ex)` (for
    envs whose reference completion is the answer block, e.g. reasoning-gym's `<answer>N</answer>`). Identical
    completions of one example are kept once. Returns (examples, completions) aligned, and counts
    `sft/self_samples`, `sft/self_kept`, `sft/self_examples` (examples with at least one kept sample).
    Raises ValueError when no sample is kept (nothing to train on) and `require`."""
    from credo.envs.runner import run_inline
    from credo.envs.verifiers import get_verifier
    from credo.rollout.backend import SamplingParams, as_generator
    from credo.rollout.engine import rollout

    if not examples:  # an empty share (data parallelism)
        _no_samples(0, cfg, require)
        return [], [], {"sft/self_samples": 0.0, "sft/self_kept": 0.0, "sft/self_examples": 0.0}
    params = SamplingParams(cfg.self_max_new_tokens, temperature=1.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), reuse_freed_memory():
        samples = rollout(as_generator(policy, tokenizer), tokenizer, env, examples, cfg.self_samples, params, g)
    exs = [examples[i // cfg.self_samples] for i in range(len(samples))]
    texts = [s.text.strip() for s in samples]
    own = run_inline(env.verify, list(zip(texts, exs, strict=True))).scores
    other = (run_inline(get_verifier(cfg.self_verifier), [(t, ex.reference) for t, ex in zip(texts, exs,
                                                                                          strict=True)]).scores
             if cfg.self_verifier else [None] * len(texts))
    kept: dict[tuple[int, str], tuple[Any, str]] = {}
    for i, (t, ex, a, b) in enumerate(zip(texts, exs, own, other, strict=True)):
        if samples[i].finish_reason != "stop":  # cut at the length cap: not a whole answer
            continue
        if a.correct:
            kept.setdefault((i // cfg.self_samples, t), (ex, t))
        elif b is not None and b.correct:
            kept.setdefault((i // cfg.self_samples, t), (ex, f"{t}\n{env.reference_completion(ex)}"))
    if not kept:
        _no_samples(len(texts), cfg, require)
    stats = {"sft/self_samples": float(len(texts)), "sft/self_kept": float(len(kept)),
             "sft/self_examples": float(len({k[0] for k in kept}))}
    return [v[0] for v in kept.values()], [v[1] for v in kept.values()], stats


def _no_samples(n: int, cfg: SFTConfig, require: bool) -> None:
    if require:
        judge = cfg.self_verifier or "the env's own"
        raise InputError(f"sft.source=self: none of {n} samples was correct (verifier: {judge}); "
                         "nothing to warm-start on")


def _self_data(policy: Policy, tokenizer: Any, env: Environment, examples: list, cfg: SFTConfig,
               seed: int) -> tuple[list, list[str], dict[str, float]]:
    """`self_completions` on this rank's share of `examples` (its own sampling seed), gathered from every rank in
    rank order, counts summed (one process: `self_completions` itself)."""
    if not dist.is_distributed():
        return self_completions(policy, tokenizer, env, examples, cfg, seed)
    parts = dist.all_gather_object(self_completions(policy, tokenizer, env, dist.share(examples), cfg,
                                                    dist.rank_seed(seed), require=False))
    exs = [e for p in parts for e in p[0]]
    stats = {k: sum(p[2][k] for p in parts) for k in parts[0][2]}
    if not exs:
        _no_samples(int(stats["sft/self_samples"]), cfg, True)
    return exs, [c for p in parts for c in p[1]], stats


def sft_tensors(tokenizer: Any, env: Environment, examples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows [N, T] and the mask of trained tokens [N, T] (`sft_rows` without the images)."""
    ids, mask, _ = sft_rows(tokenizer, env, examples)
    return ids, mask


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def length_buckets(lengths: list[int], min_saving: float = 0.2) -> list[list[int]]:
    """Split a batch's row indices into at most two groups, shortest rows first, when padding each group to its
    own longest row saves at least `min_saving` of the padded tokens; else one group. Forwarding the groups
    separately gives the same loss (a sum over the same tokens) for less compute when lengths differ a lot
    (e.g. arith's direct answers beside worked traces).

    >>> length_buckets([90, 20, 95, 22])
    [[1, 3], [0, 2]]
    >>> length_buckets([90, 85, 95, 92])
    [[0, 1, 2, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    srt = [lengths[i] for i in order]
    whole = len(srt) * srt[-1]
    best, cut = whole, 0
    for k in range(1, len(srt)):
        padded = k * srt[k - 1] + (len(srt) - k) * srt[-1]
        if padded < best:
            best, cut = padded, k
    if cut == 0 or best > (1 - min_saving) * whole:
        return [list(range(len(lengths)))]
    return [order[:cut], order[cut:]]


def sft(
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    cfg: SFTConfig,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    tools: dict[str, Tool] | None = None,
    max_images: int = 16,
) -> list[dict[str, float]]:
    """Train `policy` in place on the environment's "sft" split; returns per-step metrics. `tools` (default:
    the whole registry) and `max_images` serve multi-turn references (`sft_rows`); tool images are resampled to
    the model's `image_size`.

    Under torchrun (every rank calls it, each on a whole copy of the model): each batch is drawn alike on every
    rank, each rank runs its contiguous share of the rows, the loss is normalised by the batch's token count and
    the gradients are summed over ranks (`distributed.all_reduce_grads`), so one step is the one-process step up
    to float rounding; `sft.source = "self"` samples each rank's share of the examples (`_self_data`)."""
    examples, completions, first = env.examples("sft"), None, {}
    if cfg.source == "self":
        examples, completions, first = _self_data(policy, tokenizer, env, examples, cfg, seed)
    elif cfg.source != "reference":
        raise ValueError(f"sft.source must be 'reference' or 'self', got {cfg.source!r}")
    image_size = getattr(getattr(policy, "cfg", None), "image_size", 48)
    ids, mask, images = sft_rows(tokenizer, env, examples, tools, image_size, max_images, completions)
    lengths = mask.cumsum(1).argmax(1) + 1  # [N]: up to each row's last trained token
    dev = next(iter(policy.parameters())).device  # rows stay on the CPU; each step's go to the model
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    return_freed_memory()  # AdamW's state, made at the first step, never pins a fragmented heap (the update's rule)
    history = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=g)  # alike on every rank
        n_tokens = mask[batch].sum().clamp_min(1).to(dev)
        idx = torch.tensor(dist.share(batch.tolist()), dtype=torch.long)  # this rank's rows (all in one process)
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=dev)
        for part in (length_buckets(lengths[idx].tolist()) if len(idx) else []):  # token_mean, in length groups
            rows = idx[part]
            T = int(lengths[rows].max())  # trim padding columns
            imgs = [images[i] for i in rows.tolist()] if images is not None else None
            with reuse_freed_memory():  # each layer's activations on the memory the previous one freed
                lp, _ = sequence_logprobs(policy, ids[rows, :T].to(dev), images=imgs)
                part_loss = (-lp * mask[rows, :T].to(dev)).sum() / n_tokens
                part_loss.backward()
            loss += part_loss.detach()
        dist.all_reduce_grads(policy.parameters())
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        m = {"sft/loss": dist.all_reduce([loss.item()])[0], "sft/grad_norm": float(gnorm),
             "sft/lr": opt.param_groups[0]["lr"], **(first if step == 0 else {})}
        history.append(m)
        if on_step is not None:
            on_step(step, m)
    opt.zero_grad(set_to_none=True)
    release_free_heap()  # the gradients, allocated in the heap by the backward passes
    return history


def warm_start_model(cfg: Any, env: Environment | None = None) -> tuple[Any, Any, list[dict[str, float]]]:
    """`credo sft`: a fresh TinyLM/TinyVLM (or the model at `model.path`) trained by SFT on the env's "sft" split.

    `cfg` is a full `Config`; returns (policy, tokenizer, per-step metrics)."""
    from credo.envs import make_env
    from credo.models import build_policy, load_policy

    torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    policy, tok = load_policy(cfg.model.path, cfg.model) if cfg.model.path else build_policy(cfg.model)
    from tqdm import tqdm

    tools = {name: TOOLS[name] for name in cfg.rl.tools}
    bar = tqdm(total=cfg.sft.steps, desc="sft", disable=not cfg.run.progress, dynamic_ncols=True)

    def on_step(step: int, m: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['sft/loss']:.3f}")

    try:
        history = sft(policy, tok, env or make_env(cfg.env), cfg.sft, cfg.run.seed, on_step, tools=tools,
                      max_images=cfg.rl.max_images)
    finally:
        bar.close()
    return policy, tok, history
