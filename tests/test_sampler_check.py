"""`rollout.sampler_check`: the martingale z of sampled tokens against the trainer's distribution. On the native
backend (the sampler kernel, exact by construction) z stays near 0 at T = 1, top_p = 1 and at T = 0.7, top_p = 0.9;
the same samples checked against a temperature 15% off give |z| > 8 (or, at top_p 0.9, tokens outside the colder
nucleus), so the check can fail. The top-p nucleus by
hand. vLLM's sampler is checked with it in `tests/test_vllm_backend.py`."""

from __future__ import annotations

import math

import pytest
import torch

from credo.models import build_policy
from credo.rollout.backend import Completion, GenerationRequest, SamplingParams
from credo.rollout.native import NativeGenerator
from credo.rollout.sampler_check import nucleus_logprobs, sampler_check
from credo.trainer.config import ModelConfig


def test_nucleus_by_hand():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    torch.testing.assert_close(nucleus_logprobs(logits), logits.log_softmax(-1))
    q = nucleus_logprobs(logits, 0.7).exp()  # 0.5 < 0.7, 0.5 + 0.3 crosses it: kept; nothing after
    torch.testing.assert_close(q, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    q = nucleus_logprobs(logits, 0.5).exp()  # the first token alone reaches 0.5
    torch.testing.assert_close(q, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert math.isinf(float(nucleus_logprobs(logits, 0.5)[3]))


@pytest.fixture(scope="module")
def peaked():
    """A random TinyLM with its final norm scaled ×8: peaked next-token distributions (mean v_t ≈ 4.5 nats²), on
    which a wrong temperature shows."""
    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=96))
    with torch.no_grad():
        policy.ln_f.weight.mul_(8.0)
    prompts = [tok.encode_prompt(t) for t in ["12+7=", "3*4-1=", "5-2=", "9+9="]]
    return policy.eval(), tok, prompts


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_an_exact_sampler_passes_and_a_wrong_temperature_fails(peaked, temperature, top_p):
    policy, tok, prompts = peaked
    outs = NativeGenerator(policy, tok).generate([GenerationRequest(p, n=64) for p in prompts],
                                                 SamplingParams(16, temperature=temperature, top_p=top_p),
                                                 torch.Generator().manual_seed(0))
    r = sampler_check(policy, prompts, outs, temperature, top_p)
    assert r.tokens > 3000 and r.outside == 0 and abs(r.z) < 4  # measured: z 1.94 / −0.11
    wrong = sampler_check(policy, prompts, outs, temperature * 0.85, top_p)  # a too-cold check
    if top_p == 1.0:
        assert wrong.z < -8  # measured −21.9: sampled tokens look too unlikely
    else:  # mostly one-token nuclei at T = 0.7 (mean v_t 0.04): the colder nucleus excludes sampled tokens
        assert wrong.outside > 20  # measured 71


def test_tokens_outside_the_nucleus_are_counted_and_a_degenerate_check_raises(peaked):
    policy, tok, prompts = peaked
    with torch.no_grad():
        logits = policy(torch.tensor(prompts[0])[None])[0, -1]
    tail = Completion(torch.tensor([int(logits.argmin())]), torch.zeros(1), "length")  # the least likely token
    outs = NativeGenerator(policy, tok).generate([GenerationRequest(prompts[0], n=8)], SamplingParams(8, 1.0, 0.9),
                                                 torch.Generator().manual_seed(0))
    r = sampler_check(policy, prompts[:1], [outs[0] + [tail]], 1.0, 0.9)
    assert r.outside == 1 and r.tokens == sum(len(c.completion_ids) for c in outs[0])
    with pytest.raises(ValueError, match="non-degenerate"):  # a one-token nucleus everywhere: nothing to test
        sampler_check(policy, prompts[:1], [[tail]], 1.0, 1e-6)
