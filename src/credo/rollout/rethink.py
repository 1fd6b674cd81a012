"""VL-Rethinker Forced Rethinking (arXiv 2504.08837 §3.3; code `experience_maker.py::_generate_vllm`).

After the first rollout round, selected responses get a textual trigger ("\\n\\nWait, let's double check") appended,
optionally after cutting the response back before its last answer, and the policy continues from there at
temperature 0.9. Only continuations that pass the acceptance filter (right length, correct, few "wait"s, at most
2 per prompt) are kept; each replaces its round-0 sample in the group. The sample's tokens are

    completion_ids = round-0 tokens kept  ‖  trigger tokens  ‖  continuation tokens

with the same prompt. Token-in/token-out: the kept round-0 tokens are the sampled ids themselves (the released
code re-tokenises the decoded text instead), so their log-probs stay the sampler's.

Log-probs and loss mask of the new tokens. The trigger was not sampled by the policy, and the continuation was
sampled at `cfg.temperature`, not at the trainer's temperature. The released code trains on the whole response,
trigger included (its action mask covers every response token), and takes the PPO old log-probs of every token
from one forward pass of the actor (`Actor.forward`, at temperature 1, the training temperature). credo does the
same for the tokens it adds, from the continuation request itself (`rollout.backend`): the trigger's log-probs are
the request's `prompt_logprobs`, the continuation's are returned at `logprob_temperature` = the trainer's temperature
while it is sampled at `cfg.temperature`, so every PPO ratio starts at 1 (to the float precision at which sampler and
trainer agree). The temperature gap of the continuation (0.9 vs 1.0) is ignored, as in the release: its tokens are
scored as if sampled on-policy. `cfg.train_trigger = False` sets loss_mask = 0 on the trigger instead.
The new tokens are labelled `reasoning` (SEGMENTS has no rethink kind); `Sample.rethought` marks the sample.

Answers are checked through `envs.runner` (the verifier's runner), never through `rewards`: rollout sits below them.
The release's rules (triggers, truncation, selection, acceptance, reward shaping, auxiliary NLL) are in
`rollout.rethink_rules` and re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Environment
from credo.envs.runner import VerifyRunner
from credo.models.policy import Decoder
from credo.models.tokenizer import Tokenizer
from credo.rollout.backend import Completion, GenerationRequest, Generator, SamplingParams, as_generator
from credo.rollout.rethink_rules import (  # noqa: F401  (the rules are re-exported: callers import them from here)
    SELECT_MODES,
    SELF_VERIFY,
    TRIGGERS,
    _uniform,
    accept,
    choose_trigger,
    count_waits,
    has_rethinking,
    rethink_nll_loss,
    rethink_nll_mask,
    rethink_reward,
    rethink_reward_shaping,
    select_candidates,
    self_verifies,
    truncate_before_last_answer,
    truncate_text,
)
from credo.rollout.tool_turns import policy_text


@dataclass
class _Row:
    """One continued sample: its index, the round-0 tokens kept, the trigger's ids, the continuation's budget."""

    i: int
    keep: int
    trigger: list[int]
    budget: int


@dataclass
class _Joined:
    """A continued sample's new completion: kept ‖ trigger ‖ continuation, with the continuation's parts."""

    ids: torch.Tensor  # [C] long
    text: str
    cont: torch.Tensor  # [c] long, the continuation (cut to the row's budget)
    cont_logprobs: torch.Tensor  # [c] float, at the trainer's temperature
    trigger_logprobs: torch.Tensor  # [len(trigger)] float, at the trainer's temperature
    finish: str


def _correct(env: Environment, jobs: list[tuple[str, Example]], runner: VerifyRunner | None,
             counts: dict[str, int]) -> list[bool]:
    """`Score.correct` per (text, example) (departure: the release accepts a verifier value >= 0.5; credo reads
    the verifier's one definition of correct), through `runner` (an `envs.runner.VerifyRunner`: worker
    processes with a per-item timeout) or inline; a verifier that raises or times out counts as wrong, and is
    counted in `counts` ("errors", "timeouts")."""
    from credo.envs.runner import run_inline

    verdicts = runner.run(jobs) if runner is not None else run_inline(env.verify, jobs)
    counts["errors"] = counts.get("errors", 0) + verdicts.errors
    counts["timeouts"] = counts.get("timeouts", 0) + verdicts.timeouts
    return [bool(v.correct) for v in verdicts.scores]


def _plan(samples: list[Sample], chosen: list[int], correct0: list[bool], tokenizer: Tokenizer, cfg: Any,
          params: SamplingParams, rng: torch.Generator | None, drops: dict[str, int]) -> tuple[list[_Row], int]:
    """Per chosen sample: drop a final EOS (a stop string stays), maybe cut before the last answer, draw the
    trigger, and budget the continuation; rows without room are counted in `drops["no_room"]`. Returns the rows
    and how many were cut."""
    eos_set = set(tokenizer.eos_ids)
    rows, n_truncated = [], 0
    for i in chosen:
        ids = samples[i].completion_ids.tolist()
        keep = len(ids) - 1 if ids and ids[-1] in eos_set else len(ids)
        if _uniform(rng) < cfg.truncate_prob:
            keep = truncate_before_last_answer(ids[:keep], tokenizer.decode, cfg.paragraph_sep)
            n_truncated += 1
        trigger = choose_trigger(correct0[i], rng, cfg.triggers, cfg.p_generic, cfg.p_bare_wait,
                                 uniform=cfg.select == "wrong")
        trig = tokenizer.encode(trigger)
        budget = min(params.max_new_tokens - keep - len(trig), cfg.max_continuation - 1)
        if budget < 1:
            drops["no_room"] = drops.get("no_room", 0) + 1
            continue
        rows.append(_Row(i, keep, trig, budget))
    return rows, n_truncated


def _continue(gen: Generator, samples: list[Sample], rows: list[_Row], cfg: Any, params: SamplingParams,
              rng: torch.Generator | None) -> list[Completion]:
    """One continuation per row at `cfg.temperature`, log-probs (trigger included) at the trainer's temperature."""
    if not rows:
        return []
    cont_params = dataclasses.replace(
        params, max_new_tokens=max(r.budget for r in rows), temperature=cfg.temperature,
        logprob_temperature=params.temperature if params.temperature > 0 else 1.0)
    requests = [
        GenerationRequest(samples[r.i].prompt_ids.tolist() + samples[r.i].completion_ids[: r.keep].tolist()
                          + r.trigger, samples[r.i].images or [], prompt_logprobs=len(r.trigger))
        for r in rows  # a vision policy re-reads the prompt's images
    ]
    return [outs[0] for outs in gen.generate(requests, cont_params, rng)]


def _join(samples: list[Sample], rows: list[_Row], continuations: list[Completion],
          tokenizer: Tokenizer) -> list[_Joined]:
    out = []
    for r, c in zip(rows, continuations, strict=True):
        cont, lp, finish = c.completion_ids, c.logprobs, c.finish_reason
        if len(cont) > r.budget:
            cont, lp, finish = cont[: r.budget], lp[: r.budget], "length"
        trig_lp = c.prompt_logprobs if c.prompt_logprobs is not None else torch.zeros(0)
        ids = torch.cat([samples[r.i].completion_ids[: r.keep], torch.tensor(r.trigger, dtype=torch.long), cont])
        out.append(_Joined(ids, tokenizer.decode(ids.tolist()), cont, lp.float(), trig_lp.float(), finish))
    return out


def _rethought(s: Sample, r: _Row, j: _Joined, cfg: Any, tokenizer: Tokenizer) -> Sample:
    """The round-0 sample `s` replaced by its accepted rethink (rewards unset: score after this)."""
    n_new = len(r.trigger) + len(j.cont)
    trigger_mask = torch.full((len(r.trigger),), 1.0 if cfg.train_trigger else 0.0)
    new = dataclasses.replace(
        s,
        completion_ids=j.ids,
        loss_mask=torch.cat([s.loss_mask[: r.keep].float(), trigger_mask, torch.ones(len(j.cont))]),
        segment_ids=torch.cat([s.segment_ids[: r.keep], torch.full((n_new,), SEGMENTS["reasoning"], dtype=torch.long)]),
        sampler_logprobs=torch.cat([s.sampler_logprobs[: r.keep].float(), j.trigger_logprobs, j.cont_logprobs]),
        finish_reason=j.finish,
        text=j.text,
        reward=0.0,
        reward_parts={},
        rethought=True,
    )
    new.policy_text = policy_text(new, tokenizer)  # a multi-turn sample's kept observations stay unscored
    return new


def forced_rethink(
    generator: Generator | Decoder,
    tokenizer: Tokenizer,
    env: Environment,
    samples: list[Sample],
    examples_by_id: dict[str, Example],
    cfg: Any,
    params: SamplingParams,
    rng: torch.Generator | None = None,
    round0_correct: list[bool] | None = None,
    runner: VerifyRunner | None = None,
) -> tuple[list[Sample], dict[str, float]]:
    """One Forced Rethinking pass over a round-0 rollout batch (`cfg`: a `RethinkConfig`; `params`: the round-0
    sampling params, whose `temperature` is also the trainer's; `generator`: the run's backend, a bare model is
    wrapped by `backend.as_generator`; `rng`: the shared random stream). Returns the new sample list (accepted
    rethinks replace their originals in place; rewards are unset on them, so score after this) and `rethink/`
    metrics:

    - rate: share of samples selected and continued; accepted: share of samples replaced; accept_rate:
      accepted / continued; truncated: share of continued samples that were cut before their last answer;
    - acc_before / acc_after: accuracy of the continued samples at round 0 / after their rethink (before the
      acceptance filter); corrected: share of the round-0-wrong continued samples that became right;
    - self_verify_rate: share of all final completions with a self-verification phrase (`SELF_VERIFY`);
    - drop_<reason>: share of continued samples dropped for each `accept` reason ("no_room": no token budget).

    A continuation may use at most max_continuation - 1 tokens and must keep the whole completion within
    `params.max_new_tokens` (the release rethinks only responses of <= 2048 - 1024 tokens, `max_out_tokens` 2048).
    Round-0 correctness (`Score.correct`) is computed here unless given as `round0_correct`. Answers are
    checked through `runner` (the env's verifier in worker processes, with a timeout) or inline by `env.verify`;
    checks that raise or time out count as wrong and are reported in `verify/errors` / `verify/timeouts`.
    """
    if not samples:
        return samples, {}
    gen = as_generator(generator, tokenizer)
    counts: dict[str, int] = {}
    correct0 = round0_correct if round0_correct is not None else _correct(
        env, [(s.text, examples_by_id[s.example_id]) for s in samples], runner, counts)
    chosen = select_candidates(samples, correct0, cfg, params.max_new_tokens, rng)
    drops: dict[str, int] = {}
    rows, n_truncated = _plan(samples, chosen, correct0, tokenizer, cfg, params, rng, drops)
    joined = _join(samples, rows, _continue(gen, samples, rows, cfg, params, rng), tokenizer)
    correct1 = _correct(env, [(j.text, examples_by_id[samples[r.i].example_id]) for r, j in zip(rows, joined,
                                                                                               strict=True)],
                        runner, counts)
    out, n_accepted = list(samples), 0
    per_group: dict[int, int] = {}
    for r, j, ok in zip(rows, joined, correct1, strict=True):
        s = samples[r.i]
        reason = accept(len(j.cont), tokenizer.decode(j.cont.tolist()), ok, j.finish == "stop",
                        per_group.get(s.group_id, 0), cfg)
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
            continue
        per_group[s.group_id] = per_group.get(s.group_id, 0) + 1
        out[r.i] = _rethought(s, r, j, cfg, tokenizer)
        n_accepted += 1
    metrics = _metrics(out, [correct0[r.i] for r in rows], correct1, n_accepted, n_truncated, drops)
    metrics["verify/errors"] = float(counts.get("errors", 0))
    metrics["verify/timeouts"] = float(counts.get("timeouts", 0))
    return out, metrics


def _metrics(out: list[Sample], before: list[bool], after: list[bool], n_accepted: int, n_truncated: int,
             drops: dict[str, int]) -> dict[str, float]:
    """The `rethink/` metrics of `forced_rethink` (`before` / `after`: correctness of the continued rows)."""
    n = len(out)
    n_rows = len(before) + drops.get("no_room", 0)
    metrics = {
        "rethink/rate": n_rows / n,
        "rethink/accepted": n_accepted / n,
        "rethink/accept_rate": n_accepted / max(1, n_rows),
        "rethink/truncated": n_truncated / max(1, n_rows),
        "rethink/self_verify_rate": sum(self_verifies(s.text) for s in out) / n,
    }
    if before:
        metrics["rethink/acc_before"] = sum(before) / len(before)
        metrics["rethink/acc_after"] = sum(after) / len(before)
        wrong = [a for b, a in zip(before, after, strict=True) if not b]
        if wrong:
            metrics["rethink/corrected"] = sum(wrong) / len(wrong)
    for reason, k in drops.items():
        metrics[f"rethink/drop_{reason}"] = k / max(1, n_rows)
    return metrics
