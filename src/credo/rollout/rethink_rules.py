"""The released rules of VL-Rethinker's Forced Rethinking (arXiv 2504.08837 §3.3; code `experience_maker.py`), as
plain functions: which trigger to append, where to cut a response before its last answer, how rethinking is counted,
which round-0 samples to continue, which continuations to keep, and the rethink-aware reward shaping and auxiliary
NLL of the release. `rollout.rethink.forced_rethink` composes them into the rollout step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from credo.data import Sample

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
