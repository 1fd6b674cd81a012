"""Reward terms: one registry, each term batched over the samples, the reward their weighted sum.

    R_i = Σ_term w_term · term(samples)_i        (weights from config; every term logged as `reward/<term>`)

Verdicts come first (`credo.rewards.verify_samples` sets `Sample.verdict` once); terms read the samples,
their examples and verdicts, never another term's output. A term is an object built once with what it needs (a
blindfolded reasoner, later a judge model or a memory) and called once per rollout batch:

    term(samples, examples) -> TermResult(values [B] float tensor, metrics)

A value of NaN means "no value for this sample" (e.g. a user function returned None): the sample is then
unscorable, counted in `reward/unscorable` and left out of training, never scored 0. Samples whose verdict is
unscorable get a NaN total too.

Adding a term: a class with `__init__(self, ctx: TermContext)` and `__call__`, one entry in `TERMS`, and its
weight in `term_weights`. Rules that *set* a reward in their papers (VL-Rethinker's rethink shaping) are written
as deltas on the outcome term so that no other term is dropped (departure listed in docs/algorithms.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from credo.core.shaping import overlong_penalty
from credo.data import Example, Sample
from credo.envs.base import Environment
from credo.rewards.curiosity import count_ops, curiosity_bonus

log = logging.getLogger(__name__)


@dataclass
class TermResult:
    """One term's output: `values` [B] (NaN = no value: the sample becomes unscorable) and extra metrics."""

    values: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TermContext:
    """What terms may need at construction: the run's config (a `credo.trainer.config.Config`), the environment,
    the tokenizer, a blindfolded reasoner for Perception Verification (None when PV is off), and for terms that
    score with the policy (R3): the trainer's `policy`, its log-prob function `logprobs` (`trainer.logprobs.
    sequence_logprobs`: the rewards layer never imports the trainer) and the `start_model` directory of the run."""

    cfg: Any
    env: Environment
    tokenizer: Any = None
    reasoner: Any = None
    policy: Any = None
    logprobs: Any = None
    start_model: str = ""


class RewardTerm(Protocol):
    """A reward term: built once from a `TermContext`, then called on each rollout batch."""

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult: ...


def _verdict_part(samples: list[Sample], part: str | None) -> Tensor:
    """[B]: the verdict's value (part None) or one of its parts (0 when absent); NaN when unscorable."""
    out = []
    for s in samples:
        v = s.verdict
        if v is None or not v.scorable:
            out.append(math.nan)
        else:
            out.append(float(v.value if part is None else v.parts.get(part, 0.0)))
    return torch.tensor(out, dtype=torch.float)


class Outcome:
    """R_O: the verifier's outcome value (1 for a correct answer; partial credit where the verifier gives it)."""

    def __init__(self, ctx: TermContext) -> None:
        pass

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        return TermResult(_verdict_part(samples, None))


class Format:
    """1 when the answer is well formed: the verifier's `format` part (a non-empty answer of the expected type)."""

    def __init__(self, ctx: TermContext) -> None:
        pass

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        return TermResult(_verdict_part(samples, "format"))


class Perception:
    """MoCA's R_P (`credo.rewards.perception.perception_rewards`): 1 when the blindfolded reasoner answers right
    from the sample's perception alone. Also records the verdict on `Sample.perception_ok` for MoCA's credit."""

    def __init__(self, ctx: TermContext) -> None:
        if ctx.reasoner is None:
            raise ValueError("the perception term needs a blindfolded reasoner (reward.perception_reasoner)")
        self.ctx = ctx

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        from credo.rewards.perception import perception_rewards

        by_id = {e.id: e for e in examples}
        r_p, metrics = perception_rewards(samples, by_id, self.ctx.env, self.ctx.reasoner, self.ctx.cfg.reward,
                                          self.ctx.tokenizer)
        for s, r in zip(samples, r_p.tolist(), strict=True):
            s.perception_ok = r > 0.5
        return TermResult(r_p, metrics)


class PerceptionLength:
    """MoCA's minimality penalty −c·1[len(perception) > L] (inferred: L = 800 tokens, c = 0.1)."""

    def __init__(self, ctx: TermContext) -> None:
        self.ctx = ctx

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        from credo.rewards.perception import extract_perception, length_penalty, perception_length

        r = self.ctx.cfg.reward
        lengths = torch.tensor([perception_length(extract_perception(s.text), self.ctx.tokenizer) for s in samples],
                               dtype=torch.float)
        return TermResult(-length_penalty(lengths, r.perception_max_len, r.perception_len_penalty))


class Curiosity:
    """Pixel Reasoner's curiosity bonus per group (`credo.rewards.curiosity.curiosity_bonus`):
    α·max(H − RaPR, 0)·1[tool used] + β·min(N − n_ops, 0)."""

    def __init__(self, ctx: TermContext) -> None:
        self.c = ctx.cfg.curiosity

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        c = self.c
        n_ops = count_ops([s.n_tool_calls for s in samples], [s.n_tool_errors for s in samples], c.variant)
        gids = torch.tensor([s.group_id for s in samples], dtype=torch.long)
        out = torch.zeros(len(samples))
        for g in gids.unique():
            m = gids == g
            out[m] = curiosity_bonus(n_ops[m] > 0, n_ops[m], variant=c.variant, alpha=c.alpha, beta=c.beta,
                                     H=c.H, N=c.N).float()
        return TermResult(out)


class RethinkShaping:
    """VL-Rethinker's rethink-aware reward as a delta on the outcome: rethink_reward(...) − R_O, so that
    R_O + delta is the released value (1.1 bonus, −0.1 invalid) and every other term still reaches the total.
    Departure: the release replaces the whole reward by it."""

    def __init__(self, ctx: TermContext) -> None:
        self.require_format = True

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        from credo.rollout.rethink import rethink_reward

        out, bonus, invalid = [], 0, 0
        for s in samples:
            v = s.verdict
            if v is None or not v.scorable:
                out.append(math.nan)
                continue
            formatted = v.parts.get("format", 1.0) >= 0.5 or not self.require_format
            r = rethink_reward(bool(v.correct), s.finish_reason == "stop", formatted, s.text, s.rethought)
            bonus += r > 1.0
            invalid += r < 0.0
            out.append(r - float(v.value))
        n = max(1, len(samples))
        return TermResult(torch.tensor(out, dtype=torch.float),
                          {"reward/rethink_bonus": bonus / n, "reward/rethink_invalid": invalid / n})


class Overlong:
    """DAPO's soft overlong punishment (`credo.core.shaping.overlong_penalty`) of the completion length."""

    def __init__(self, ctx: TermContext) -> None:
        self.max_len, self.cache = ctx.cfg.rl.max_new_tokens, ctx.cfg.rl.overlong_cache

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.long)  # [B]
        pen = overlong_penalty(lengths, self.max_len, self.cache)  # [B]
        return TermResult(pen.float(), {"rollout/overlong_share": float((pen < 0).float().mean())})


class Function:
    """A user reward function with TRL's signature (`GRPOTrainer(reward_funcs=...)`), called once per batch:

        fn(prompts: list[str], completions: list[str], *, completion_ids, reference, <dataset columns>, **kw)
            -> list[float | None]

    called by keyword, as TRL calls it (so `fn(completions, **kwargs)` works too). Columns are the examples' `meta`
    fields and, for a dataset env, each column of the example's row (as TRL passes a dataset's columns), plus
    `reference`. None or NaN
    marks a sample as unscorable; an exception makes the whole batch unscorable (counted, `reward/function_errors`;
    the first one is logged with its traceback).
    The function runs in the trainer process, as in TRL (the per-item `fn(completion, example)` form runs in the
    verification workers instead, see `reward.function`)."""

    def __init__(self, ctx: TermContext) -> None:
        from credo.envs.functions import load_function

        self.fn = load_function(ctx.cfg.reward.function)
        self.name, self.env, self.errors = ctx.cfg.reward.function, ctx.env, 0

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        by_id = {e.id: e for e in examples}
        exs = [by_id[s.example_id] for s in samples]
        fields = [{**e.meta, **(e.meta["row"] if isinstance(e.meta.get("row"), dict) else {})} for e in exs]
        columns: dict[str, list[Any]] = {"reference": [e.reference for e in exs]}
        for key in sorted({k for f in fields for k in f} - {"prompt", "prompts", "completions", "completion_ids"}):
            columns.setdefault(key, [f.get(key) for f in fields])  # a dataset row's columns, as TRL passes them
        prompts = [self.env.render_prompt(e) for e in exs]
        try:
            out = list(self.fn(prompts=prompts, completions=[s.text for s in samples],
                               completion_ids=[s.completion_ids.tolist() for s in samples], **columns))
            if len(out) != len(samples):
                raise ValueError(f"returned {len(out)} values for {len(samples)} completions")
            values = [math.nan if v is None else float(v) for v in out]
            errors = 0
        except Exception as err:  # a broken user function costs this batch's term, never the run; counted
            values, errors = [math.nan] * len(samples), 1
            self.errors += 1
            if self.errors == 1:  # the first with its traceback; later ones only counted
                log.warning("reward.function %s raised %s: %s; this batch's %d samples are unscorable (counted in "
                            "reward/function_errors; later errors are only counted)", self.name,
                            type(err).__name__, err, len(samples), exc_info=True)
        return TermResult(torch.tensor(values, dtype=torch.float), {"reward/function_errors": float(errors)})


def _r3(ctx: TermContext) -> RewardTerm:
    from credo.rewards.r3 import R3

    return R3(ctx)


def _r3_aggregate(ctx: TermContext) -> RewardTerm:
    from credo.rewards.r3 import R3Aggregate

    return R3Aggregate(ctx)


def _r3_length(ctx: TermContext) -> RewardTerm:
    from credo.rewards.r3 import R3Length

    return R3Length(ctx)


def _memory_exploit(ctx: TermContext) -> RewardTerm:
    from credo.rewards.memory import MemoryExploit

    return MemoryExploit(ctx)


def _memory_explore(ctx: TermContext) -> RewardTerm:
    from credo.rewards.memory import MemoryExplore

    return MemoryExplore(ctx)


def _judge(ctx: TermContext) -> RewardTerm:
    from credo.rewards.judge import JudgeTerm

    return JudgeTerm(ctx)


TERMS: dict[str, Callable[[TermContext], RewardTerm]] = {
    "outcome": Outcome,
    "format": Format,
    "perception": Perception,
    "perception_length": PerceptionLength,
    "curiosity": Curiosity,
    "rethink_shaping": RethinkShaping,
    "overlong": Overlong,
    "function": Function,
    "r3": _r3,  # DRO's R3 (rewards/r3.py), imported when chosen
    "r3_aggregate": _r3_aggregate,
    "r3_length": _r3_length,
    "memory_exploit": _memory_exploit,  # Memory-R+ (rewards/memory.py), imported when chosen
    "memory_explore": _memory_explore,
    "judge": _judge,  # critique-then-score judge (rewards/judge.py), its model loaded when chosen
}


def term_weights(cfg: Any, trl_function: bool = False) -> dict[str, float]:
    """The enabled terms and their weights, from a `credo.trainer.config.Config` (terms of weight 0 are off):
    outcome `reward.outcome`, format `reward.format`, perception λ = `reward.perception` (with its length
    penalty at weight 1), curiosity 1 when `curiosity.variant` is set, rethink shaping 1 when
    `rethink.reward_shaping`, overlong 1 when `rl.overlong_cache` > 0, a TRL-signature `reward.function` at
    `reward.function_weight`; R3, its aggregate-certainty variant and its length term at `reward.r3`,
    `reward.r3_aggregate`, `reward.r3_length`; Memory-R+ at `reward.memory_exploit`, `reward.memory_explore`; the
    critique-then-score judge at `reward.judge`."""
    pv = cfg.reward.perception
    weights = {
        "outcome": cfg.reward.outcome,
        "format": cfg.reward.format,
        "perception": pv,
        "perception_length": 1.0 if pv > 0 else 0.0,
        "curiosity": 1.0 if cfg.curiosity.variant else 0.0,
        "rethink_shaping": 1.0 if cfg.rethink.enabled and cfg.rethink.reward_shaping else 0.0,
        "overlong": 1.0 if cfg.rl.overlong_cache > 0 else 0.0,
        "function": cfg.reward.function_weight if trl_function else 0.0,
        **{k: getattr(cfg.reward, k) for k in ("r3", "r3_aggregate", "r3_length", "memory_exploit", "memory_explore",
                                                "judge")},
    }
    return {k: w for k, w in weights.items() if w != 0}


class RewardModel:
    """The reward of a rollout batch: the enabled terms, built once, their weighted sum set on each sample.

    `__call__(samples, examples)` sets `Sample.reward` (NaN when unscorable) and `Sample.reward_parts` (each
    term's unweighted value, plus the verdict's parts as `verifier/<part>`) and returns metrics: `reward/<term>`
    and `reward/mean` over the scorable samples, `reward/<verifier part>`, `reward/unscorable` (count)."""

    def __init__(self, weights: dict[str, float], ctx: TermContext) -> None:
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown reward term(s) {unknown}; known: {', '.join(TERMS)}")
        self.weights = dict(weights)
        self.terms = {name: TERMS[name](ctx) for name in weights}

    def __call__(self, samples: list[Sample], examples: list[Example]) -> dict[str, float]:
        B = len(samples)
        total = torch.zeros(B)
        values: dict[str, Tensor] = {}
        metrics: dict[str, float] = {}
        for name, term in self.terms.items():
            res = term(samples, examples)
            if res.values.shape != (B,):
                raise ValueError(f"reward term {name!r} returned shape {tuple(res.values.shape)}, expected ({B},)")
            values[name] = res.values.float()
            total += self.weights[name] * values[name]
            metrics.update(res.metrics)
        for i, s in enumerate(samples):
            s.reward = float(total[i])
            s.reward_parts = {name: float(v[i]) for name, v in values.items()}
            if s.verdict is not None:
                s.reward_parts.update({f"verifier/{k}": float(v) for k, v in s.verdict.parts.items()})
        ok = [i for i, s in enumerate(samples) if s.scorable]
        n = max(1, len(ok))
        for name, v in values.items():
            metrics[f"reward/{name}"] = float(v[ok].sum()) / n
        parts = sorted({k for i in ok for k in samples[i].reward_parts if k.startswith("verifier/")})
        for k in parts:
            metrics.setdefault(f"reward/{k.removeprefix('verifier/')}",
                               sum(samples[i].reward_parts.get(k, 0.0) for i in ok) / n)
        metrics["reward/mean"] = float(total[ok].sum()) / n
        metrics["reward/unscorable"] = float(B - len(ok))
        return metrics


__all__ = ["TERMS", "RewardModel", "RewardTerm", "TermContext", "TermResult", "term_weights"]
