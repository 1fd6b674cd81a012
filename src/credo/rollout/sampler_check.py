"""Does a generation backend sample from the distribution the trainer computes? A check over every sampled token.

For a sampled token x_t drawn from q_t (the trainer's softmax(logits / T) at that position, restricted to the top-p
nucleus and renormalised when top_p < 1):

    a_t = log q_t(x_t) + H(q_t)          E[a_t | x_<t] = 0,   Var[a_t | x_<t] = v_t = Var_{x~q_t}[log q_t(x)]

so S = Σ_t a_t is a martingale and z = S / sqrt(Σ_t v_t) is approximately N(0, 1) when the engine samples from q
(martingale central limit theorem; the sum runs over every token of every completion). A sampler at another
temperature, or one that truncates differently, moves E[a_t] off zero at every position and |z| grows like the
square root of the number of tokens. Tokens outside the nucleus (impossible under q) are counted separately.

This tests the sampling itself, which `rollout/logprob_diff` cannot: that metric compares the log-probs the engine
REPORTS for its tokens with the trainer's, and says nothing about how the tokens were drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from credo.rollout.backend import Completion
from credo.rollout.sampler import _top_p_filter


@dataclass
class SamplerCheck:
    """z: the statistic above (N(0, 1) for an exact sampler); tokens: how many sampled tokens it sums over;
    outside: sampled tokens outside the top-p nucleus; mean_var: mean v_t (how informative the positions are:
    near 0 when every distribution is one-hot or the nucleus has one token)."""

    z: float
    tokens: int
    outside: int
    mean_var: float


def nucleus_logprobs(logits: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """log q over the last axis of `logits` [..., V]: log softmax, restricted to the smallest set of most likely
    tokens whose mass reaches `top_p` (the token that crosses it included; vLLM's and HF's convention) and
    renormalised; −inf outside the set. `top_p` ≥ 1: the plain log softmax."""
    if top_p >= 1.0:
        return torch.log_softmax(logits, -1)
    return torch.log_softmax(_top_p_filter(logits, top_p), -1)  # the native sampler's nucleus, one definition


@torch.no_grad()
def sampler_check(policy: Any, prompts: list[list[int]], completions: list[list[Completion]], temperature: float,
                  top_p: float = 1.0) -> SamplerCheck:
    """The check (module docstring) of `completions[i]` (samples of `prompts[i]`, token ids) against `policy`'s
    next-token logits [n, T, V] (`policy(ids)`, one forward per prompt of its n right-padded rows), scaled by
    1 / `temperature` and truncated to `top_p`. Every completion token must be a sample (stop strings cut, EOS
    kept as sampled). Raises ValueError when there is nothing to check (no token with v_t > 0)."""
    s, v, n, outside = 0.0, 0.0, 0, 0
    for prompt, outs in zip(prompts, completions, strict=True):
        if not outs:
            continue
        P, L = len(prompt), max(len(c.completion_ids) for c in outs)
        ids = torch.zeros(len(outs), P + L, dtype=torch.long)  # right-padded: causal attention never sees the pad
        ids[:, :P] = torch.tensor(prompt)
        for i, c in enumerate(outs):
            ids[i, P:P + len(c.completion_ids)] = c.completion_ids
        all_logits = policy(ids)[:, P - 1:-1].float() / temperature  # [n, L, V]: the logits that predict each token
        for i, c in enumerate(outs):
            lq = nucleus_logprobs(all_logits[i, :len(c.completion_ids)], top_p)  # [l, V]
            q = lq.exp()
            lq0 = torch.where(q > 0, lq, torch.zeros_like(lq))  # 0·log 0 = 0
            H = -(q * lq0).sum(-1)  # [l]
            var = (q * (lq0 + H[:, None]) ** 2).sum(-1)  # [l], the terms with q = 0 vanish
            lx = lq.gather(-1, c.completion_ids[:, None].to(lq.device))[:, 0]
            bad = torch.isinf(lx)
            outside += int(bad.sum())
            s += float((lx[~bad] + H[~bad]).sum())
            v += float(var[~bad].sum())
            n += int((~bad).sum())
    if v <= 0:
        raise ValueError("sampler_check: no position with a non-degenerate sampling distribution")
    return SamplerCheck(s / math.sqrt(v), n, outside, v / max(n, 1))


__all__ = ["SamplerCheck", "nucleus_logprobs", "sampler_check"]
