"""Turn `Example`s into `Sample`s: render and encode prompts, sample G completions each through a `Generator`,
decode."""

from __future__ import annotations

import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Environment
from credo.models.policy import Decoder
from credo.models.tokenizer import Tokenizer
from credo.rollout.backend import GenerationRequest, Generator, SamplingParams, as_generator


def encode_prompt(tokenizer: Tokenizer, env: Environment, example: Example) -> list[int]:
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
    generator: Generator | Decoder,
    tokenizer: Tokenizer,
    env: Environment,
    examples: list[Example],
    group_size: int,
    params: SamplingParams,
    rng: torch.Generator | None = None,
    first_group_id: int = 0,
) -> list[Sample]:
    """`group_size` samples per example (one request with n = group_size), one group id per example, in example
    order. `generator`: the run's generation backend (a bare model is wrapped by `backend.as_generator`); `rng`:
    the shared random stream of the sampling."""
    gen = as_generator(generator, tokenizer)
    requests = [GenerationRequest(encode_prompt(tokenizer, env, ex), ex.images, group_size) for ex in examples]
    samples = []
    for g, (ex, req, outs) in enumerate(zip(examples, requests, gen.generate(requests, params, rng), strict=True)):
        for c in outs:
            n = len(c.completion_ids)
            samples.append(
                Sample(
                    example_id=ex.id,
                    group_id=first_group_id + g,
                    prompt_ids=torch.tensor(req.prompt_ids, dtype=torch.long),
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
