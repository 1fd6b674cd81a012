"""Per-token step labels for `rl.credit = "first_error"` from an environment's step checker.

An environment with a step checker has `first_error(completion, example) -> (start, end) | None`: the character
span of the first wrong step of a completion (the arith sandbox compares each line with the reference trace).
This module maps that span onto the tokens of a collated batch: a token is in the wrong step when its first
character is (a token that decodes to nothing, EOS, sits at the character after the text, so an empty span at
the end of the text marks the EOS of a completion that stopped too early).
"""

from __future__ import annotations

from typing import Any

import torch

from credo.analysis.strategic_grams import token_char_ends
from credo.core.credit import AFTER, BEFORE, WRONG
from credo.data import Batch, Example, Sample


def step_labels(ids: list[int], tokenizer: Any, span: tuple[int, int] | None) -> torch.Tensor:
    """Labels [C] (BEFORE / WRONG / AFTER) of one completion's tokens for the wrong-step character span `span`.

    >>> from credo.models.tokenizer import CharTokenizer
    >>> tok = CharTokenizer()
    >>> step_labels(tok.encode("ab\\ncd\\nef"), tok, (3, 6)).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2]
    >>> step_labels(tok.encode("ab\\n") + [tok.eos_id], tok, (3, 3)).tolist()
    [0, 0, 0, 1]
    """
    labels = torch.full((len(ids),), BEFORE, dtype=torch.long)
    if span is None or not ids:
        return labels
    ends = torch.tensor(token_char_ends(ids, tokenizer))  # [C]
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])  # [C]: each token's first character
    s, e = span
    labels[starts >= s] = AFTER
    labels[(starts >= s) & (starts < max(e, s + 1))] = WRONG
    return labels


def fill_step_labels(
    batch: Batch, samples: list[Sample], examples: dict[str, Example], env: Any, tokenizer: Any
) -> dict[str, float]:
    """Set `batch.step_labels` [B, T] (first_error's credit input) for `batch`, the collated `samples` (same
    order), from the environment's step checker; return metrics: `credit/located`, the share of failed samples
    (not `Sample.correct`) whose first wrong step was found, and `credit/wrong_step_tokens`, its mean length in
    tokens. Raises ValueError when the environment has no step checker."""
    check = getattr(env, "first_error", None)
    if check is None:
        raise ValueError(f"rl.credit='first_error' needs a step checker: environment {env.name!r} has no first_error")
    steps = torch.full(batch.loss_mask.shape, BEFORE, dtype=torch.long)  # [B, T]
    n_failed, n_located, n_tokens = 0, 0, 0
    for i, s in enumerate(samples):
        labels = step_labels(s.completion_ids.tolist(), tokenizer, check(s.text, examples[s.example_id]))
        P = len(s.prompt_ids)
        steps[i, P : P + len(labels)] = labels
        if not s.correct:
            n_failed += 1
            wrong = int((labels == WRONG).sum())
            n_located += wrong > 0
            n_tokens += wrong
    batch.step_labels = steps
    return {"credit/located": n_located / max(1, n_failed), "credit/wrong_step_tokens": n_tokens / max(1, n_located)}


__all__ = ["fill_step_labels", "step_labels"]
