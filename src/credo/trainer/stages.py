"""The RL step's stages, each a function on typed records, in the order `loop.train` calls them:

    collect (rollout → verdicts → rewards → advantages, with DAPO refill) → credit → selection → update

Method state that persists across steps (SSR's replay buffer, HICRA's strategic grams) lives in objects with
`state_dict` / `load_state_dict` (`Stateful`), so exact resume needs no per-method code in the loop. Which credit
inputs are filled follows `core.credit.NEEDS` of the configured method (plus HICRA's planning diagnostics), and
which selector runs is a registry lookup: no method name is tested in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from credo.analysis.strategic_grams import SEEDS, StrategicGrams, apply_hicra, hicra_metrics
from credo.core.advantages import ADVANTAGES, informative_groups, to_tokens
from credo.core.credit import CREDIT, NEEDS
from credo.core.selection import SELECTION
from credo.data import Batch, Sample, collate
from credo.envs.base import sample_metrics
from credo.envs.tools import TOOLS
from credo.rewards import verify_samples
from credo.rewards.steps import fill_step_labels
from credo.rollout.engine import rollout
from credo.rollout.multiturn import multiturn_rollout, tool_use_metrics
from credo.rollout.rethink import forced_rethink, has_rethinking, rethink_nll_mask
from credo.rollout.segments import label_samples
from credo.trainer import distributed as dist
from credo.trainer.dapo import dynamic_sampling_fill
from credo.trainer.host_memory import reuse_freed_memory
from credo.trainer.replay import make_replay_buffer, ssr_select


class Stateful(Protocol):
    """Method state saved in checkpoints."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class StepContext:
    """What the stages share for a run (built once by `loop.build_run`)."""

    cfg: Any  # credo.trainer.config.Config
    env: Any
    policy: Any
    tokenizer: Any
    gen: Any  # rollout.backend.Generator on the policy: every rollout, rethink, evaluation and PV reasoner
    generator: torch.Generator
    stream: Any  # loop.PromptStream
    train_examples: list
    test_examples: list
    by_id: dict
    runner: Any  # reward verdicts (env verifier or a per-item reward.function)
    eval_runner: Any  # the env's own verdicts (Forced Rethinking, evaluation)
    reward_model: Any  # rewards.terms.RewardModel
    timers: Any
    providers: dict[str, Any] = field(default_factory=dict)  # credit-input providers by batch field
    selector: Any = None


def merge(record: dict[str, Any], metrics: dict[str, float]) -> None:
    """Add a rollout round's metrics to the step record: counts (`verify/*`) add up over DAPO's extra rounds;
    other values keep the first round's (the policy's own batch, before re-rolling)."""
    for k, v in metrics.items():
        if k.startswith("verify/") and k in record:
            record[k] += v
        else:
            record.setdefault(k, v)


# ---- collect: rollout → verdicts → rewards → advantages -------------------------------------------------


def rollout_stage(ctx: StepContext, n_prompts: int, first_group: int, record: dict) -> list[Sample]:
    """`n_prompts` fresh prompts (data parallel: this rank's contiguous share, `dist.share`; every rank's stream
    advances by all `n_prompts`, so the data position is global) × `rl.group_size` samples (multi-turn with tools
    when `rl.multiturn`), then Forced Rethinking and segment labels when configured. The decoding's transient
    buffers reuse heap memory, handed back after (`trainer.host_memory.reuse_freed_memory`)."""
    cfg, g = ctx.cfg, ctx.generator
    params = sampling_params(cfg)
    examples = [ctx.train_examples[i] for i in dist.share(ctx.stream.take(n_prompts))]  # this rank's groups
    ctx.policy.eval()
    with reuse_freed_memory():
        if cfg.rl.multiturn:  # tool calls executed between turns; observations get loss_mask 0
            tools = {name: TOOLS[name] for name in cfg.rl.tools}
            samples, m = multiturn_rollout(ctx.gen, ctx.tokenizer, ctx.env, examples, cfg.rl.group_size, params, g,
                                           cfg.rl.max_turns, cfg.rl.max_images, tools, first_group)
            merge(record, m)
        else:
            samples = rollout(ctx.gen, ctx.tokenizer, ctx.env, examples, cfg.rl.group_size, params, g, first_group)
        if cfg.rethink.enabled:
            samples, m = forced_rethink(ctx.gen, ctx.tokenizer, ctx.env, samples, ctx.by_id, cfg.rethink, params, g,
                                        runner=ctx.eval_runner)
            merge(record, m)
    if cfg.rl.segments:  # perception / reasoning / answer labels from the completion's tags
        merge(record, label_samples(samples, ctx.tokenizer))
    ctx.policy.train()
    return samples


def sampling_params(cfg: Any) -> Any:
    from credo.rollout.sampler import SamplingParams

    return SamplingParams(cfg.rl.max_new_tokens, cfg.rl.temperature, cfg.rl.top_p)


def reward_stage(ctx: StepContext, samples: list[Sample], record: dict) -> None:
    """Verdicts once, then the reward terms; tool-use and the env's own diagnostics."""
    m = verify_samples(samples, ctx.by_id, ctx.env, ctx.runner)
    examples = [ctx.by_id[s.example_id] for s in samples]
    m.update(ctx.reward_model(samples, list({e.id: e for e in examples}.values())))
    if ctx.cfg.rl.multiturn:
        m.update(tool_use_metrics(samples))
    m.update(sample_metrics(ctx.env, [s.text for s in samples], examples))
    merge(record, m)


def group_advantages(samples: list[Sample], name: str) -> Tensor:
    """Sequence advantages [B] within groups (`core.advantages.ADVANTAGES[name]`), computed over the scorable
    samples only: an unscorable sample enters no group statistic and gets advantage 0 (it is also dropped from the
    batch before the update)."""
    adv = torch.zeros(len(samples))
    ok = torch.tensor([s.scorable for s in samples], dtype=torch.bool)
    if ok.any():
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float)[ok]
        gids = torch.tensor([s.group_id for s in samples], dtype=torch.long)[ok]
        adv[ok] = ADVANTAGES[name](rewards, gids)
    return adv


def collect(ctx: StepContext, record: dict) -> tuple[list[Sample], Tensor]:
    """The step's samples and their sequence advantages [B]: one round, or DAPO dynamic sampling's rounds until
    `rl.prompts_per_step` informative groups are found."""
    cfg = ctx.cfg

    def one_round(n_prompts: int, first_group: int) -> tuple[list[Sample], Tensor]:
        with ctx.timers("rollout"):
            samples = rollout_stage(ctx, n_prompts, first_group, record)
        with ctx.timers("reward"):
            reward_stage(ctx, samples, record)
        return samples, group_advantages(samples, cfg.rl.advantage)

    if not cfg.rl.dynamic_sampling:
        return one_round(cfg.rl.prompts_per_step, 0)
    samples, m = dynamic_sampling_fill(one_round, cfg.rl.prompts_per_step, cfg.rl.dynamic_max_rounds)
    record.update(m)
    return samples, (group_advantages(samples, cfg.rl.advantage) if samples else torch.zeros(0))


# ---- credit -----------------------------------------------------------------------------------------------


class PlanningMask:
    """HICRA's planning tokens (`batch.planning_mask`) from strategic grams mined on correct rollouts."""

    def __init__(self, ctx: StepContext) -> None:
        rl = ctx.cfg.rl
        self.tokenizer = ctx.tokenizer
        self.grams = StrategicGrams(rl.hicra_ngram, rl.hicra_min_support, rl.hicra_refresh,
                                    seeds=SEEDS.get(ctx.env.name, ()))

    def fill(self, batch: Batch, samples: list[Sample], step: int) -> dict[str, float]:
        self.grams.update([s.text for s in samples if s.correct], step)
        batch.planning_mask = apply_hicra(samples, self.grams, self.tokenizer)  # [B, T]
        return hicra_metrics(samples, self.grams, batch.planning_mask)

    def state_dict(self) -> dict[str, Any]:
        return self.grams.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grams.load_state_dict(state)


class StepLabels:
    """first_error's step labels (`batch.step_labels`) from the environment's step checker."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def fill(self, batch: Batch, samples: list[Sample], step: int) -> dict[str, float]:
        return fill_step_labels(batch, samples, self.ctx.by_id, self.ctx.env, self.ctx.tokenizer)


# batch fields that need a stage of their own (`correct` and `perception_ok` come from the verdicts via collate)
PROVIDERS: dict[str, Any] = {"planning_mask": PlanningMask, "step_labels": StepLabels}


def make_providers(ctx: StepContext) -> dict[str, Any]:
    """The providers the configured credit method needs (`core.credit.NEEDS`), plus the planning mask when
    `rl.planning_metrics` asks for HICRA's diagnostics."""
    fields = set(NEEDS[ctx.cfg.rl.credit]) | ({"planning_mask"} if ctx.cfg.rl.planning_metrics else set())
    return {f: PROVIDERS[f](ctx) for f in sorted(fields) if f in PROVIDERS}


def credit_stage(ctx: StepContext, samples: list[Sample], adv: Tensor, step: int, record: dict) -> None:
    """Token advantages [C] on every scorable sample: the sequence advantage on its loss tokens, redistributed by
    `CREDIT[rl.credit]` with the inputs the providers fill. Stored on `Sample.token_advantages`, so a sample
    replayed later (SSR) keeps the credit of its own step."""
    ok = [i for i, s in enumerate(samples) if s.scorable]
    if not ok:
        return
    rows = [samples[i] for i in ok]
    batch = collate(rows, ctx.tokenizer.pad_id)
    for provider in ctx.providers.values():
        record.update(provider.fill(batch, rows, step))
    token_adv = to_tokens(adv[ok], batch.loss_mask)  # [B, T]
    token_adv = CREDIT[ctx.cfg.rl.credit](token_adv, batch, ctx.cfg.rl)
    for row, s in enumerate(rows):
        P = len(s.prompt_ids)
        s.token_advantages = token_adv[row, P : P + len(s.completion_ids)].clone()


# ---- selection --------------------------------------------------------------------------------------------


class GroupSelector:
    """`core.selection.SELECTION[rl.selection]` on sequence advantages (keeps every sample by default)."""

    def __init__(self, ctx: StepContext) -> None:
        self.fn = SELECTION[ctx.cfg.rl.selection]

    def __call__(self, samples: list[Sample], adv: Tensor, g: torch.Generator) -> tuple[list[Sample], dict]:
        keep = self.fn(adv, torch.tensor([s.group_id for s in samples], dtype=torch.long), g)
        return [samples[i] for i in keep.tolist()], {}


class SSRSelector:
    """VL-Rethinker's Selective Sample Replay (`trainer.replay.ssr_select`) with its replay buffer as state."""

    def __init__(self, ctx: StepContext) -> None:
        self.cfg = ctx.cfg.rl
        self.buffer = make_replay_buffer(ctx.cfg.rl)

    def __call__(self, samples: list[Sample], adv: Tensor, g: torch.Generator) -> tuple[list[Sample], dict]:
        used, _, m = ssr_select(samples, adv, self.buffer, self.cfg, g)
        return used, m

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)


SELECTORS: dict[str, Any] = {"group": GroupSelector, "ssr": SSRSelector}


def sigma_keep(sigmas: list[float | None], group_ids: list[int], min_sigma: float, drop_frac: float) -> list[int]:
    """Indices (ascending) of the samples whose group survives R3's variance filter: groups whose σ_max (the
    group's max_j σ_j, `Sample.reference_sigma`) is below `min_sigma` go, then the lowest ⌊drop_frac · #groups⌋ of
    the rest by σ_max (ties: the later group first). A sample without a σ (None) is kept.

    >>> sigma_keep([0.1, 0.1, 0.5, 0.5, None], [0, 0, 1, 1, 2], min_sigma=0.2, drop_frac=0.0)
    [2, 3, 4]
    """
    sig: dict[int, float] = {}
    for s, g in zip(sigmas, group_ids, strict=True):
        if s is not None:
            sig[g] = s
    alive = [g for g in sig if sig[g] >= min_sigma]
    alive.sort(key=lambda g: (sig[g], -g))
    dropped = {g for g in sig if sig[g] < min_sigma} | set(alive[: int(drop_frac * len(sig))])
    return [i for i, g in enumerate(group_ids) if g not in dropped]


class SigmaFilter:
    """DRO's variance-based prompt filter (arXiv 2506.13351 v3) in front of another selector: groups with too
    little comparative signal (`sigma_keep` on `Sample.reference_sigma`, set by the R3 terms) leave the step's
    batch, the wrapped selector chooses among the rest. Metric `select/sigma_dropped_groups` (share of groups).
    Departure: the paper filters its prompt set once per training round (N = 16 or 32 CoTs per prompt, plus a
    top-k rank filter and a 10% carry-over); here the filter acts per step on each group's own samples."""

    def __init__(self, inner: Any, min_sigma: float, drop_frac: float) -> None:
        if not 0 <= drop_frac < 1 or min_sigma < 0:
            raise ValueError(f"r3.filter_drop_frac must be in [0, 1) and r3.filter_min_sigma >= 0, got {drop_frac} "
                             f"and {min_sigma}")
        self.inner, self.min_sigma, self.drop_frac = inner, min_sigma, drop_frac

    def __call__(self, samples: list[Sample], adv: Tensor, g: torch.Generator) -> tuple[list[Sample], dict]:
        gids = [s.group_id for s in samples]
        keep = sigma_keep([s.reference_sigma for s in samples], gids, self.min_sigma, self.drop_frac)
        n_groups = len(set(gids))
        kept_groups = len({gids[i] for i in keep})
        used, m = self.inner([samples[i] for i in keep], adv[keep], g) if keep else ([], {})
        return used, {**m, "select/sigma_dropped_groups": (n_groups - kept_groups) / max(1, n_groups)}

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)


def group_filter_keep(rewards: list[float], group_ids: list[int], min_std: float = 0.05,
                      max_mean: float = 0.9) -> list[int]:
    """Indices (ascending) of the samples whose group survives the RationalRewards RL filter (released RL code,
    methods.md §7): a group goes when the population std of its rewards is < `min_std` (nothing to compare) or
    their mean is > `max_mean` (already solved). Rewards are the scorable samples' totals.

    >>> group_filter_keep([0.2, 0.2, 0.1, 0.9, 0.95, 0.97], [0, 0, 1, 1, 2, 2])
    [2, 3]
    """
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rewards, group_ids, strict=True):
        by_group.setdefault(g, []).append(r)
    kept = set()
    for g, rs in by_group.items():
        t = torch.tensor(rs, dtype=torch.float64)
        if float(t.std(correction=0)) >= min_std and float(t.mean()) <= max_mean:
            kept.add(g)
    return [i for i, g in enumerate(group_ids) if g in kept]


class GroupFilter:
    """The RationalRewards group filter (`group_filter_keep`, `judge.group_filter`) in front of another selector.
    Metric `select/group_filter_dropped` (share of groups). Choice: the std is the population std (the released
    code's estimator is not recorded in methods.md)."""

    def __init__(self, inner: Any, min_std: float, max_mean: float) -> None:
        self.inner, self.min_std, self.max_mean = inner, min_std, max_mean

    def __call__(self, samples: list[Sample], adv: Tensor, g: torch.Generator) -> tuple[list[Sample], dict]:
        gids = [s.group_id for s in samples]
        keep = group_filter_keep([s.reward for s in samples], gids, self.min_std, self.max_mean)
        n_groups, kept = len(set(gids)), len({gids[i] for i in keep})
        used, m = self.inner([samples[i] for i in keep], adv[keep], g) if keep else ([], {})
        return used, {**m, "select/group_filter_dropped": (n_groups - kept) / max(1, n_groups)}

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)


def make_selector(ctx: StepContext) -> Any:
    """The run's selector: SSR (`rl.ssr`) or GroupSelector, behind R3's variance filter when `r3.filter_min_sigma`
    or `r3.filter_drop_frac` is set, and behind the RationalRewards group filter when `judge.group_filter`."""
    sel = SELECTORS["ssr" if ctx.cfg.rl.ssr else "group"](ctx)
    r3 = ctx.cfg.r3
    if r3.filter_min_sigma > 0 or r3.filter_drop_frac > 0:
        sel = SigmaFilter(sel, r3.filter_min_sigma, r3.filter_drop_frac)
    if ctx.cfg.judge.group_filter:
        sel = GroupFilter(sel, ctx.cfg.judge.group_min_std, ctx.cfg.judge.group_max_mean)
    return sel


def selection_stage(ctx: StepContext, samples: list[Sample], adv: Tensor, record: dict) -> Batch | None:
    """The batch to train on: unscorable samples dropped (and truncated ones with `rl.mask_truncated`), the
    selector's choice, collated with the samples' own token advantages; None when nothing is left (no update
    this step: not a failure)."""
    scorable = [i for i, s in enumerate(samples) if s.scorable]
    if ctx.cfg.rl.mask_truncated:  # DAPO's overlong filter: truncated completions leave the loss, counted
        n = len(scorable)
        scorable = [i for i in scorable if samples[i].finish_reason != "length"]
        record["rollout/truncated_masked"] = float(n - len(scorable))
    kept = [samples[i] for i in scorable]
    used, m = ctx.selector(kept, adv[scorable], ctx.generator) if kept else ([], {})
    record.update(m)
    if not used:
        return None
    batch = collate(used, ctx.tokenizer.pad_id)
    rethink = ctx.cfg.rethink
    if rethink.enabled and rethink.nll_coef > 0:  # an update-time loss input (Forced Rethinking's NLL)
        row_adv = (batch.advantages * batch.loss_mask).sum(1)  # [B]: the sign of each row's credit
        batch.token_masks["nll"] = rethink_nll_mask(batch.loss_mask, row_adv, has_rethinking(used))
    return batch


def rollout_metrics(samples: list[Sample], adv: Tensor, n_kept: int) -> dict[str, float]:
    """Response length, finish reasons, the share of groups with a learning signal (`core.advantages.
    informative_groups` on the scorable samples' rewards), the share of groups whose scorable samples are both
    right and wrong (`adv/mixed_correct_groups`: the outcome's own signal, apart from shaping or intrinsic reward
    terms such as Memory-R+'s, which can make every group informative) and the share of samples trained on."""
    n = len(samples)
    ok = [s for s in samples if s.scorable]
    groups = {s.group_id for s in samples}
    verdicts: dict[int, set[bool]] = {}
    for s in ok:
        verdicts.setdefault(s.group_id, set()).add(s.correct)
    informative = set()
    if ok:
        gid = torch.tensor([s.group_id for s in ok], dtype=torch.long)
        rewards = torch.tensor([s.reward for s in ok], dtype=torch.float)
        informative = {int(x) for x in gid[informative_groups(rewards, gid)].tolist()}
    return {
        "rollout/response_len": sum(len(s.completion_ids) for s in samples) / n,
        "rollout/finish_stop": sum(s.finish_reason == "stop" for s in samples) / n,
        "adv/nonzero_groups": len(informative) / max(1, len(groups)),
        "adv/mixed_correct_groups": sum(len(v) == 2 for v in verdicts.values()) / max(1, len(groups)),
        "adv/selected": n_kept / n,
    }
