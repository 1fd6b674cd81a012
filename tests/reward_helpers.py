"""Verifiers and user reward functions for test_reward_terms.py and test_unscorable.py, in a module that verify
worker processes and `reward.function` import paths can import by name."""

from __future__ import annotations

import re
import time
from typing import Any

from credo.data import Score

CALLS: list[dict[str, Any]] = []  # what `trl_reward` was called with (in this process)


def answer_of(text: str) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", text)
    return found[-1].strip() if found else None


def marked(completion: str, example: Any) -> Any:
    """1 when the last `<answer>` equals the reference, format 1; but a marker in the completion breaks it:
    "crashed" raises, "hang" sleeps for 1000 s, "nan" returns NaN, "none" returns None."""
    if "crashed" in completion:
        raise RuntimeError("verifier crashed")
    if "hang" in completion:
        time.sleep(1000)
    if "nan" in completion:
        return float("nan")
    if "none" in completion:
        return None
    return Score(float(answer_of(completion) == str(example.reference)), {"format": 1.0})


def trl_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], reference: list[Any],
               unit: list[str], **kwargs: Any) -> list[float | None]:
    """A TRL-signature reward function (`GRPOTrainer(reward_funcs=...)`): 1 when the completion holds the
    reference followed by the row's `unit` column, 0.25 otherwise; None (no value) on a completion "skip"."""
    CALLS.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                  "reference": reference, "unit": unit, **kwargs})
    return [None if c == "skip" else 1.0 if f"{r} {u}" in c else 0.25
            for c, r, u in zip(completions, reference, unit, strict=True)]


def trl_raises(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    raise RuntimeError("user reward bug")


def trl_short(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [1.0]  # one value, whatever the batch size


def trl_reward_len(completions: list[str], **kwargs: Any) -> list[float]:
    """TRL's quick-start shape: only `completions` named, the rest as keywords."""
    return [-abs(20 - len(c)) for c in completions]


def trl_column(prompts: list[str], completions: list[str], final: list[Any], **kwargs: Any) -> list[float]:
    """Reads a dataset column (`final`) by name, as a TRL function does."""
    return [float(str(f) in c) for c, f in zip(completions, final, strict=True)]
