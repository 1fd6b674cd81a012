"""Truncated importance sampling (rl.tis_cap): the weights by hand, and the update's gradient equal to the one of
advantages multiplied by those weights (core.stats.truncated_is_weights, trainer.update.policy_update)."""

from __future__ import annotations

import math

import pytest
import torch

from credo.core.stats import truncated_is_weights
from credo.data import Batch
from credo.models.tiny import TinyConfig, TinyLM
from credo.trainer.config import RLConfig
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.update import policy_update

V = 40


def test_tis_weights_hand_computed():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.0, -2.0 - math.log(1.5), -0.5 - math.log(4.0)]])  # ratios 1, 1.5, 4
    w = truncated_is_weights(old, sampler, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.5, 2.0]]))  # the last one capped at C = 2
    low = truncated_is_weights(torch.tensor([[-3.0]]), torch.tensor([[-1.0]]), cap=2.0)
    assert float(low) == pytest.approx(math.exp(-2.0))  # below 1: never raised to 1
    huge = truncated_is_weights(torch.tensor([[0.0]]), torch.tensor([[-1e4]]), cap=2.0)
    assert float(huge) == pytest.approx(2.0)  # no overflow before the cap
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sampler, cap=0.0)


def _policy() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64))


def _batch() -> Batch:
    g = torch.Generator().manual_seed(3)
    B, P, T = 4, 3, 10
    ids = torch.randint(1, V, (B, T), generator=g)
    loss_mask = torch.zeros(B, T)
    loss_mask[:, P:] = 1.0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * loss_mask
    return Batch(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.bool), loss_mask=loss_mask,
                 segment_ids=torch.zeros(B, T).long(), old_logprobs=torch.zeros(B, T), advantages=adv,
                 group_ids=torch.arange(B) // 2, rewards=torch.zeros(B))


def _sgd_step(batch: Batch, cfg: RLConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    policy = _policy()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    m = policy_update(policy, torch.optim.SGD(policy.parameters(), lr=1.0), batch, cfg, torch.Generator())
    return {n: p.detach() - before[n] for n, p in policy.named_parameters()}, m


def test_tis_update_equals_advantages_times_the_hand_weights():
    """Sampler log-probs = trainer's − δ with δ ∈ {0, log 1.5, log 4, −log 2}: weights 1, 1.5, 2 (cap), 0.5. The TIS
    update equals a plain update (π_old recomputed) on advantages multiplied by those weights."""
    batch = _batch()
    with torch.no_grad():
        lp, _ = sequence_logprobs(_policy(), batch.input_ids)
    deltas = torch.tensor([0.0, math.log(1.5), math.log(4.0), -math.log(2.0)])
    delta = deltas[torch.arange(batch.input_ids.shape[1]) % 4][None, :].expand_as(lp)
    batch.old_logprobs = (lp - delta) * batch.loss_mask  # what the rollout engine reported
    cfg = RLConfig(minibatches=1, warmup_steps=0, max_grad_norm=1e9, tis_cap=2.0)
    got, m = _sgd_step(batch, cfg)
    w = torch.tensor([1.0, 1.5, 2.0, 0.5])[torch.arange(batch.input_ids.shape[1]) % 4][None, :]
    manual = Batch(**{**batch.__dict__, "advantages": batch.advantages * w})
    want, _ = _sgd_step(manual, RLConfig(minibatches=1, warmup_steps=0, max_grad_norm=1e9,
                                         recompute_old_logprobs=True))
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-5)
    mask = batch.loss_mask.bool()
    assert m["rollout/tis_weight"] == pytest.approx(float(w.expand_as(mask)[mask].mean()), rel=1e-5)
    assert m["rollout/tis_capped"] == pytest.approx(float((w.expand_as(mask)[mask] == 2.0).float().mean()))
    assert any(float(d.abs().max()) > 0 for d in got.values())  # it moved
    off, m_off = _sgd_step(batch, RLConfig(minibatches=1, warmup_steps=0, max_grad_norm=1e9))
    assert "rollout/tis_weight" not in m_off  # off by default
    assert any(not torch.allclose(off[n], got[n]) for n in got)
