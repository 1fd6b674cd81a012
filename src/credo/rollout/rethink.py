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
same for the tokens it adds: trigger and continuation get log π_old from one forward pass of the (unchanged) policy
at the trainer's temperature (`trainer.logprobs.sequence_logprobs`, exactly what the trainer recomputes), so every
PPO ratio starts at 1. The temperature gap of the continuation (0.9 vs 1.0) is ignored, as in the release: its
tokens are scored as if sampled on-policy. `cfg.train_trigger = False` sets loss_mask = 0 on the trigger instead.
The new tokens are labelled `reasoning` (SEGMENTS has no rethink kind); `Sample.rethought` marks the sample.

Also here: the rethink-aware reward shaping (`rethink_reward_shaping`, code `get_logprobs_and_logs`) and the
auxiliary NLL on positive rethinking samples (`rethink_nll_mask`, `rethink_nll_loss`, code `group_sft`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch

from credo.data import SEGMENTS, Example, Sample, collate
from credo.envs.base import Environment
from credo.models.policy import Policy
from credo.rollout.sampler import SamplingParams, cut_at_stop_text, generate

TRIGGERS: tuple[str, ...] = (
    "\n\nWait",
    "\n\nWait, does it seem right?",
    "\n\nWait, let's double check",
    "\n\nWait, there might be a mistake",
)
SELECT_MODES = ("all", "wrong")
# Self-verification phrases: the triggers' "wait", the release's wait counter words, and re-checking phrases.
# The arith traces' fixed "check: done" line is deliberately not one (a bare "check" does not match).
SELF_VERIFY = re.compile(r"\b(wait|alternatively|double[- ]check\w*|re-?check\w*|re-?examin\w*)\b", re.IGNORECASE)


def _uniform(generator: torch.Generator | None) -> float:
    dev = generator.device if generator is not None else "cpu"
    return float(torch.rand(1, generator=generator, device=dev))


# ---- pieces ------------------------------------------------------------------------------------------------


def choose_trigger(
    correct: bool,
    generator: torch.Generator | None,
    triggers: tuple[str, ...] | list[str] = TRIGGERS,
    p_generic: float = 0.5,
    p_bare_wait: float = 0.4,
    uniform: bool = False,
) -> str:
    """The released training rule: with prob `p_generic` a generic trigger (0 with prob `p_bare_wait`, else 1);
    otherwise trigger 2 ("let's double check") after a correct round-0 answer, 3 ("there might be a mistake")
    after a wrong one. So P = (.2, .3, .5, 0) when correct and (.2, .3, 0, .5) when wrong. `uniform` draws one of
    all triggers uniformly (the release's `append_wait` mode for incorrect samples)."""
    if uniform:
        return triggers[int(torch.randint(len(triggers), (1,), generator=generator))]
    if len(triggers) < 4:
        raise ValueError(f"rethink: the selection rule needs 4 triggers, got {len(triggers)}")
    if _uniform(generator) < p_generic:
        return triggers[0] if _uniform(generator) < p_bare_wait else triggers[1]
    return triggers[2] if correct else triggers[3]


def truncate_text(text: str, sep: str = "\n\n") -> str:
    """The released cut: before the last "Wait", then before the last "\\\\boxed", then before the first
    (case-insensitive) "answer", then back to the last `sep` (stripped). Each step only where its marker occurs.

    >>> truncate_text("a\\n\\nb so the answer is 5.\\n\\nWait, 6")
    'a'
    >>> truncate_text("first 1+2=3\\ncheck: done\\n<answer>3</answer>", sep="\\n")
    'first 1+2=3\\ncheck: done'
    """
    i = text.rfind("Wait")
    if i > -1:
        text = text[:i]
    i = text.rfind("\\boxed")
    if i > -1:
        text = text[:i]
    i = text.lower().find("answer")
    if i > -1:
        text = text[:i]
    i = text.rfind(sep)
    if i > -1:
        text = text[:i].strip()
    return text


def truncate_before_last_answer(ids: list[int], decode: Callable[[list[int]], str], sep: str = "\n\n") -> int:
    """How many of `ids` to keep: the longest prefix whose text is a prefix of `truncate_text(decode(ids))`.
    A token that straddles the cut is dropped (binary search: O(log n) decodes)."""
    kept = truncate_text(decode(ids), sep)
    lo, hi = 0, len(ids) + 1  # decode(ids[:lo]) fits, decode(ids[:hi]) does not (hi = len + 1: sentinel)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if kept.startswith(decode(ids[:mid])):
            lo = mid
        else:
            hi = mid
    return lo


def count_waits(text: str) -> int:
    """The released code's rethinking count: #"wait," + #"wait a" + #"alternatively", case-insensitive.

    >>> count_waits("Wait, no. Wait a moment. Alternatively, wait")
    3
    """
    t = text.lower()
    return t.count("wait,") + t.count("wait a") + t.count("alternatively")


def self_verifies(text: str) -> bool:
    """True when the text contains a self-verification phrase (`SELF_VERIFY`).

    >>> self_verifies("then 3+4=7\\n\\nWait, let's double check"), self_verifies("check: done")
    (True, False)
    """
    return SELF_VERIFY.search(text) is not None


def select_candidates(
    samples: list[Sample], correct: list[bool], cfg: Any, max_new_tokens: int, generator: torch.Generator | None
) -> list[int]:
    """Indices of the round-0 samples to rethink, per prompt group (released rule, `cfg.select`):

    - every mode: the response ended (EOS / stop string) and has <= max_new_tokens - reserve_tokens tokens;
    - "all" (`force_append_wait`): in a group with accuracy > easy_acc, incorrect responses are skipped;
    - "wrong" (`append_wait`): only incorrect responses of groups with accuracy <= hard_acc;
    - then each is skipped with probability skip_prob.
    """
    if cfg.select not in SELECT_MODES:
        raise ValueError(f"rethink.select: unknown value {cfg.select!r}; choose one of {list(SELECT_MODES)}")
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group_id, []).append(i)
    out = []
    for idx in groups.values():
        acc = sum(correct[i] for i in idx) / len(idx)
        if cfg.select == "wrong" and acc > cfg.hard_acc:
            continue
        for i in idx:
            s = samples[i]
            if s.finish_reason != "stop" or len(s.completion_ids) > max_new_tokens - cfg.reserve_tokens:
                continue
            if cfg.select == "all" and acc > cfg.easy_acc and not correct[i]:
                continue
            if cfg.select == "wrong" and correct[i]:
                continue
            if _uniform(generator) < cfg.skip_prob:
                continue
            out.append(i)
    return out


def accept(n_continuation: int, continuation_text: str, correct: bool, finished: bool, n_accepted: int,
           cfg: Any) -> str:
    """The acceptance filter of one rethink; "" to accept, else the reason to drop it (checked in this order):

    - "length": not min_continuation < n_continuation < max_continuation (tokens of the continuation only);
    - "unfinished": the continuation hit its token budget (in the release an unfinished continuation runs to the
      2048-token cap and fails the length test; credo caps it earlier, so it is checked explicitly);
    - "incorrect": the final answer (of prefix + trigger + continuation) is wrong, when require_correct;
    - "per_prompt": the group already has max_per_prompt accepted rethinks;
    - "waits": 1 + count_waits(continuation) > max_waits (the trigger's own "wait" counts as the 1).

    >>> from types import SimpleNamespace as NS
    >>> c = NS(min_continuation=30, max_continuation=1024, require_correct=True, max_per_prompt=2, max_waits=4)
    >>> accept(40, "so 7.", True, True, 0, c), accept(40, "so 7.", False, True, 0, c), accept(30, "", True, True, 0, c)
    ('', 'incorrect', 'length')
    """
    if not cfg.min_continuation < n_continuation < cfg.max_continuation:
        return "length"
    if not finished:
        return "unfinished"
    if cfg.require_correct and not correct:
        return "incorrect"
    if n_accepted >= cfg.max_per_prompt:
        return "per_prompt"
    if 1 + count_waits(continuation_text) > cfg.max_waits:
        return "waits"
    return ""


def _correct(env: Environment, jobs: list[tuple[str, Example]], runner: Any, counts: dict[str, int]) -> list[bool]:
    """Verifier value >= 0.5 per (text, example), through `runner` (a `rewards.runner.VerifyRunner`: worker
    processes with a per-item timeout) or inline; a verifier that raises or times out counts as wrong, and is
    counted in `counts` ("errors", "timeouts")."""
    from credo.envs.runner import run_inline

    verdicts = runner.run(jobs) if runner is not None else run_inline(env.verify, jobs)
    counts["errors"] = counts.get("errors", 0) + verdicts.errors
    counts["timeouts"] = counts.get("timeouts", 0) + verdicts.timeouts
    return [v.value >= 0.5 for v in verdicts.scores]


@torch.no_grad()
def _policy_logprobs(policy: Policy, samples: list[Sample], pad_id: int, temperature: float,
                     batch_size: int) -> list[torch.Tensor]:
    """log π(completion token | prefix) [C] of each sample, by the trainer's own function on collated rows."""
    from credo.trainer.logprobs import sequence_logprobs  # the exact recomputation the trainer does

    dev = next(iter(policy.parameters())).device
    out = []
    for k in range(0, len(samples), batch_size):
        chunk = samples[k : k + batch_size]
        batch = collate(chunk, pad_id)
        images = [s.images or [] for s in chunk] if any(s.images for s in chunk) else None
        lp, _ = sequence_logprobs(policy, batch.input_ids.to(dev), temperature, images=images)  # [b, T]
        lp = lp.float().cpu()
        for j, s in enumerate(chunk):
            P, C = len(s.prompt_ids), len(s.completion_ids)
            out.append(lp[j, P : P + C].clone())
    return out


# ---- the step ----------------------------------------------------------------------------------------------


def forced_rethink(
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    samples: list[Sample],
    examples_by_id: dict[str, Example],
    cfg: Any,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    max_batch: int = 512,
    forward_batch: int = 8,
    round0_correct: list[bool] | None = None,
    runner: Any = None,
) -> tuple[list[Sample], dict[str, float]]:
    """One Forced Rethinking pass over a round-0 rollout batch (`cfg`: a `RethinkConfig`; `params`: the round-0
    sampling params, whose `temperature` is also the trainer's). Returns the new sample list (accepted rethinks
    replace their originals in place; rewards are unset on them, so score after this) and `rethink/` metrics:

    - rate: share of samples selected and continued; accepted: share of samples replaced; accept_rate:
      accepted / continued; truncated: share of continued samples that were cut before their last answer;
    - acc_before / acc_after: accuracy of the continued samples at round 0 / after their rethink (before the
      acceptance filter); corrected: share of the round-0-wrong continued samples that became right;
    - self_verify_rate: share of all final completions with a self-verification phrase (`SELF_VERIFY`);
    - drop_<reason>: share of continued samples dropped for each `accept` reason ("no_room": no token budget).

    A continuation may use at most max_continuation - 1 tokens and must keep the whole completion within
    `params.max_new_tokens` (the release rethinks only responses of <= 2048 - 1024 tokens, `max_out_tokens` 2048).
    Round-0 correctness (verifier value >= 0.5) is computed here unless given as `round0_correct`. Answers are
    checked through `runner` (the env's verifier in worker processes, with a timeout) or inline by `env.verify`;
    checks that raise or time out count as wrong and are reported in `verify/errors` / `verify/timeouts`.
    """
    n = len(samples)
    if n == 0:
        return samples, {}
    counts: dict[str, int] = {}
    correct0 = round0_correct if round0_correct is not None else _correct(
        env, [(s.text, examples_by_id[s.example_id]) for s in samples], runner, counts)
    chosen = select_candidates(samples, correct0, cfg, params.max_new_tokens, generator)

    eos = getattr(tokenizer, "eos_ids", tokenizer.eos_id)
    eos_set = {eos} if isinstance(eos, int) else set(eos)
    rows: list[tuple[int, int, list[int], int]] = []  # (sample index, kept tokens, trigger ids, token budget)
    drops: dict[str, int] = {}
    n_truncated = 0
    for i in chosen:
        ids = samples[i].completion_ids.tolist()
        keep = len(ids) - 1 if ids and ids[-1] in eos_set else len(ids)  # the EOS goes; a stop string stays
        if _uniform(generator) < cfg.truncate_prob:
            keep = truncate_before_last_answer(ids[:keep], tokenizer.decode, cfg.paragraph_sep)
            n_truncated += 1
        trigger = choose_trigger(correct0[i], generator, cfg.triggers, cfg.p_generic, cfg.p_bare_wait,
                                 uniform=cfg.select == "wrong")
        trig = tokenizer.encode(trigger)
        budget = min(params.max_new_tokens - keep - len(trig), cfg.max_continuation - 1)
        if budget < 1:
            drops["no_room"] = drops.get("no_room", 0) + 1
            continue
        rows.append((i, keep, trig, budget))

    continuations = []
    if rows:
        cont_params = SamplingParams(max(b for *_, b in rows), cfg.temperature, params.top_p, params.stop)
        prompts = [samples[i].prompt_ids.tolist() + samples[i].completion_ids[:k].tolist() + t for i, k, t, _ in rows]
        stop_ids = [tokenizer.encode(s) for s in params.stop]
        images = [samples[i].images or [] for i, *_ in rows]  # a vision policy re-reads the prompt's images
        has_images = any(images)
        for k in range(0, len(prompts), max_batch):
            continuations += generate(policy, prompts[k : k + max_batch], cont_params, eos, tokenizer.pad_id,
                                      stop_ids, generator, images[k : k + max_batch] if has_images else None)
        if params.stop:
            continuations = [cut_at_stop_text(c, tokenizer.decode, params.stop) for c in continuations]

    accepted: list[tuple[int, Sample, int]] = []  # (sample index, new sample, first new token)
    n_accepted: dict[int, int] = {}
    correct1 = []
    joined = []  # (ids, text, continuation, finish) per continued row
    for (i, keep, trig, budget), c in zip(rows, continuations, strict=True):
        cont, finish = c.completion_ids, c.finish_reason
        if len(cont) > budget:
            cont, finish = cont[:budget], "length"
        ids = torch.cat([samples[i].completion_ids[:keep], torch.tensor(trig, dtype=torch.long), cont])
        joined.append((ids, tokenizer.decode(ids.tolist()), cont, finish))
    correct1 = _correct(env, [(text, examples_by_id[samples[i].example_id])
                              for (i, *_), (_, text, _, _) in zip(rows, joined, strict=True)], runner, counts)
    for (i, keep, trig, _), (ids, text, cont, finish), ok in zip(rows, joined, correct1, strict=True):
        s = samples[i]
        reason = accept(len(cont), tokenizer.decode(cont.tolist()), ok, finish == "stop",
                        n_accepted.get(s.group_id, 0), cfg)
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
            continue
        n_accepted[s.group_id] = n_accepted.get(s.group_id, 0) + 1
        n_new = len(trig) + len(cont)
        trig_mask = 1.0 if cfg.train_trigger else 0.0
        new = dataclasses.replace(
            s,
            completion_ids=ids,
            loss_mask=torch.cat([s.loss_mask[:keep].float(), torch.full((len(trig),), trig_mask),
                                 torch.ones(len(cont))]),
            segment_ids=torch.cat([s.segment_ids[:keep],
                                   torch.full((n_new,), SEGMENTS["reasoning"], dtype=torch.long)]),
            sampler_logprobs=torch.cat([s.sampler_logprobs[:keep].float(), torch.zeros(n_new)]),  # tail set below
            finish_reason=finish,
            text=text,
            reward=0.0,
            reward_parts={},
            rethought=True,
        )
        accepted.append((i, new, keep))

    out = list(samples)
    if accepted:
        lps = _policy_logprobs(policy, [a[1] for a in accepted], tokenizer.pad_id, params.temperature, forward_batch)
        for (i, new, keep), lp in zip(accepted, lps, strict=True):
            new.sampler_logprobs[keep:] = lp[keep:]
            out[i] = new

    n_rows = len(rows) + drops.get("no_room", 0)
    metrics = {
        "rethink/rate": n_rows / n,
        "rethink/accepted": len(accepted) / n,
        "rethink/accept_rate": len(accepted) / max(1, n_rows),
        "rethink/truncated": n_truncated / max(1, n_rows),
        "rethink/self_verify_rate": sum(self_verifies(s.text) for s in out) / n,
    }
    if rows:
        before = [correct0[i] for i, *_ in rows]
        metrics["rethink/acc_before"] = sum(before) / len(rows)
        metrics["rethink/acc_after"] = sum(correct1) / len(rows)
        wrong = [a for b, a in zip(before, correct1, strict=True) if not b]
        if wrong:
            metrics["rethink/corrected"] = sum(wrong) / len(wrong)
    for reason, k in drops.items():
        metrics[f"rethink/drop_{reason}"] = k / max(1, n_rows)
    metrics["verify/errors"] = float(counts.get("errors", 0))
    metrics["verify/timeouts"] = float(counts.get("timeouts", 0))
    return out, metrics


# ---- reward shaping and the auxiliary NLL ------------------------------------------------------------------


def rethink_reward(
    correct: bool,
    finished: bool,
    formatted: bool,
    text: str,
    rethought: bool,
    *,
    bonus: float = 1.1,
    per_wait: float = 0.2,
    invalid: float = -0.1,
    max_wait_words: int = 5,
) -> float:
    """The released rethink-aware reward (`get_logprobs_and_logs`; not in the paper):

        valid = finished and formatted and text.lower().count("wait") <= 5
        r = -0.1 if not valid else (1 if correct else 0)
        native (not force-rethought) and correct:  r = 1.1 if 0 < n_wait < 3 else max(r - 0.2 n_wait, -0.1)

    with n_wait = `count_waits(text)`. `formatted` stands for the release's `"boxed" in solution` check.

    >>> rethink_reward(True, True, True, "x. Wait, yes. 5", False), rethink_reward(True, True, True, "5", True)
    (1.1, 1.0)
    >>> rethink_reward(False, False, True, "5", False)
    -0.1
    """
    if not (finished and formatted and text.lower().count("wait") <= max_wait_words):
        return invalid
    r = 1.0 if correct else 0.0
    if correct and not rethought:
        n_wait = count_waits(text)
        r = bonus if 0 < n_wait < 3 else max(r - per_wait * n_wait, invalid)
    return r


def rethink_reward_shaping(samples: list[Sample], require_format: bool = True) -> dict[str, float]:
    """Replace every sample's reward by `rethink_reward` (call after `rewards.score_samples`, which sets the parts
    read here: correct = the `outcome` part (else `verifier/correct`, else the reward) >= 0.5; formatted = the
    verifier's `format` part >= 0.5, when it has one and `require_format`). The shaped value replaces the weighted
    reward entirely, as in the release, and is also stored as the part `rethink_shaped`. Returns `reward/mean`
    (the shaped mean, to overwrite the unshaped one) and the shares of bonus (1.1) and invalid (-0.1) rewards."""
    bonus = invalid = 0
    for s in samples:
        parts = s.reward_parts
        correct = parts.get("outcome", parts.get("verifier/correct", s.reward)) >= 0.5
        formatted = parts.get("verifier/format", 1.0) >= 0.5 or not require_format
        r = rethink_reward(correct, s.finish_reason == "stop", formatted, s.text, s.rethought)
        bonus += r > 1.0
        invalid += r < 0.0
        s.reward = r
        parts["rethink_shaped"] = r
    n = max(1, len(samples))
    return {"reward/mean": sum(s.reward for s in samples) / n, "reward/rethink_bonus": bonus / n,
            "reward/rethink_invalid": invalid / n}


def has_rethinking(samples: list[Sample]) -> torch.Tensor:
    """[B] bool: the sample was force-rethought or rethinks natively (`count_waits` >= 1); the release's
    `n_wait_round1 >= 1`, where a forced rethink always counts 1 for its trigger."""
    return torch.tensor([s.rethought or count_waits(s.text) > 0 for s in samples], dtype=torch.bool)


def rethink_nll_mask(loss_mask: torch.Tensor, advantages: torch.Tensor, rethinks: torch.Tensor) -> torch.Tensor:
    """Tokens of the auxiliary NLL (release `group_sft`): the loss tokens of samples that rethink and have a
    positive advantage. loss_mask [B, T], advantages [B] (sequence level), rethinks [B] bool -> [B, T]."""
    keep = (advantages > 0) & rethinks  # [B]
    return loss_mask * keep.to(loss_mask.dtype)[:, None]  # [B, T]


def rethink_nll_loss(logprobs: torch.Tensor, nll_mask: torch.Tensor) -> torch.Tensor:
    """sft_loss = Σ_{i: n_wait_i >= 1, A_i > 0} Σ_t −log π(y_it) / #tokens of those samples (0 when none);
    the trainer adds `nll_coef` (release: 0.05) times it to the policy loss. logprobs, nll_mask [B, T] -> []."""
    return -(logprobs * nll_mask).sum() / nll_mask.sum().clamp(min=1.0)
