"""Held-out evaluation: greedy accuracy, unbiased pass@k and mean response length."""

from __future__ import annotations

from typing import Any

import torch

from credo.core.stats import pass_at_k_batch
from credo.data import Example
from credo.envs.base import Environment
from credo.models.policy import Policy
from credo.rollout.engine import rollout
from credo.rollout.sampler import SamplingParams


def evaluate(
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    examples: list[Example],
    max_new_tokens: int,
    n_samples: int,
    pass_k: list[int],
    temperature: float,
    seed: int,
) -> dict[str, float]:
    """Greedy accuracy over `examples` and pass@k from `n_samples` samples each (Chen et al. estimator)."""
    was_training = policy.training
    policy.eval()
    greedy = rollout(policy, tokenizer, env, examples, 1, SamplingParams(max_new_tokens, temperature=0.0))
    correct = [env.verify(s.text, ex).value >= 1.0 for s, ex in zip(greedy, examples, strict=True)]
    out = {
        "eval/greedy_acc": sum(correct) / len(examples),
        "eval/response_len": sum(len(s.completion_ids) for s in greedy) / len(greedy),
    }
    if n_samples > 0 and pass_k:
        g = torch.Generator().manual_seed(seed)
        params = SamplingParams(max_new_tokens, temperature=temperature)
        sampled = rollout(policy, tokenizer, env, examples, n_samples, params, g)
        hits = torch.tensor(
            [env.verify(s.text, examples[i // n_samples]).value >= 1.0 for i, s in enumerate(sampled)]
        ).view(len(examples), n_samples)
        n_correct = hits.sum(1)
        for k in pass_k:
            if k <= n_samples:
                out[f"eval/pass@{k}"] = float(pass_at_k_batch(n_correct, n_samples, k).mean())
    policy.train(was_training)
    return out
