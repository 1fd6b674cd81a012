"""Filters applied to an environment's examples at load time."""

from __future__ import annotations

from typing import Any

from credo.data import Example
from credo.envs.base import Environment


def prompt_tokens(example: Example, env: Environment, tokenizer: Any) -> int:
    """Length in tokens of the prompt the policy is given for `example`: the env's rendered prompt framed by the
    tokenizer (`encode_prompt`: BOS + text, or the chat template), plus the image placeholders of a vision
    tokenizer, as `rollout.engine.encode_prompt` builds it."""
    ids = tokenizer.encode_prompt(env.render_prompt(example))
    if example.images and hasattr(tokenizer, "with_images"):
        ids = tokenizer.with_images(ids, len(example.images))
    return len(ids)


def filter_overlong(
    examples: list[Example], env: Environment, tokenizer: Any, max_tokens: int
) -> tuple[list[Example], int]:
    """The examples whose prompt is at most `max_tokens` policy tokens long (`prompt_tokens`), in their order, and
    how many were dropped. `max_tokens <= 0` keeps everything without tokenizing.

    verl's `data.filter_overlong_prompts` (`RLHFDataset`: keep a row when its chat-templated prompt has
    `<= max_prompt_length` tokens); here the count is returned so the caller prints and logs it.

    >>> from credo.models.tokenizer import CharTokenizer
    >>> class Env:
    ...     def render_prompt(self, ex): return ex.prompt
    >>> exs = [Example("a", "1+1", 2), Example("b", "10+10", 20), Example("c", "2+2", 4)]
    >>> kept, n = filter_overlong(exs, Env(), CharTokenizer(), 4)  # BOS + 3 characters = 4 tokens
    >>> [e.id for e in kept], n
    (['a', 'c'], 1)
    """
    if max_tokens <= 0:
        return list(examples), 0
    kept = [ex for ex in examples if prompt_tokens(ex, env, tokenizer) <= max_tokens]
    return kept, len(examples) - len(kept)
