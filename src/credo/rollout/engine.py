"""Turn `Example`s into `Sample`s: render and encode prompts, sample G completions each, decode."""

from __future__ import annotations

from typing import Any

import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Environment
from credo.models.policy import Policy
from credo.rollout.sampler import SamplingParams, cut_at_stop_text, generate


def encode_prompt(tokenizer: Any, env: Environment, example: Example) -> list[int]:
    """The rendered prompt's tokens as the tokenizer frames a prompt (BOS + text, or a chat template), with the
    tokenizer's image placeholders when the example has images."""
    ids = tokenizer.encode_prompt(env.render_prompt(example))
    if example.images:
        if not hasattr(tokenizer, "with_images"):
            raise ValueError(f"example {example.id!r} has images but the model's tokenizer takes none "
                             "(use a vision model, e.g. model.kind = \"tinyvlm\")")
        ids = tokenizer.with_images(ids, len(example.images))
    return ids


def rollout(
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    examples: list[Example],
    group_size: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    first_group_id: int = 0,
    max_batch: int = 512,
) -> list[Sample]:
    """`group_size` samples per example, one group id per example, decoded in batches of at most
    `max_batch` rows (the KV cache grows with the batch: 512 rows keep a 1M-parameter model under 0.5 GB)."""
    prompts = [encode_prompt(tokenizer, env, ex) for ex in examples for _ in range(group_size)]
    stop_ids = [tokenizer.encode(s) for s in params.stop]
    eos_ids = getattr(tokenizer, "eos_ids", tokenizer.eos_id)
    images = [ex.images for ex in examples for _ in range(group_size)]
    has_images = any(images)
    completions = []
    for i in range(0, len(prompts), max_batch):
        chunk = prompts[i : i + max_batch]
        imgs = images[i : i + max_batch] if has_images else None
        completions += generate(policy, chunk, params, eos_ids, tokenizer.pad_id, stop_ids, generator, imgs)
    if params.stop:
        completions = [cut_at_stop_text(c, tokenizer.decode, params.stop) for c in completions]
    samples = []
    for i, c in enumerate(completions):
        ex = examples[i // group_size]
        n = len(c.completion_ids)
        samples.append(
            Sample(
                example_id=ex.id,
                group_id=first_group_id + i // group_size,
                prompt_ids=torch.tensor(c.prompt_ids, dtype=torch.long),
                completion_ids=c.completion_ids,
                loss_mask=torch.ones(n),
                segment_ids=torch.full((n,), SEGMENTS["reasoning"], dtype=torch.long),
                sampler_logprobs=c.logprobs,
                finish_reason=c.finish_reason,
                text=tokenizer.decode(c.completion_ids.tolist()),
                images=ex.images,
            )
        )
    return samples
