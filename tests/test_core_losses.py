"""Per-token policy losses: hand-computed PPO-clip, REINFORCE and GSPO cases, and their gradients."""

import math

import pytest
import torch

from credo.core.aggregation import seq_mean_token_mean
from credo.core.losses import LOSSES, LossParams, gspo, ppo_clip, reinforce
from credo.core.stats import masked_mean

ASYM = LossParams(eps_low=0.2, eps_high=0.3)  # clip range [0.8, 1.3]


def _logprobs_for_ratios(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0] * len(ratios)])
    logprobs = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return logprobs, old


def test_ppo_clip_hand_case():
    # token: A, ratio → unclipped -A·r, clipped -A·clip(r, 0.8, 1.3) → max
    # t0: +1, 1.5 → -1.5, -1.3 → -1.3 (clipped, strict)
    # t1: -1, 0.5 →  0.5,  0.8 →  0.8 (clipped, strict)
    # t2: +1, 1.1 → -1.1, -1.1 → -1.1 (inside the range: tie, not counted as clipped)
    # t3: -1, 1.5 →  1.5,  1.3 →  1.5 (A<0 with a high ratio is never clipped)
    logprobs, old = _logprobs_for_ratios([1.5, 0.5, 1.1, 1.5])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, metrics = ppo_clip(logprobs, old, adv, mask, ASYM)
    torch.testing.assert_close(loss, torch.tensor([[-1.3, 0.8, -1.1, 1.5]]))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))  # 2 of 4
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor((1.5 + 0.5 + 1.1 + 1.5) / 4))
    log_r = [math.log(x) for x in (1.5, 0.5, 1.1, 1.5)]
    torch.testing.assert_close(metrics["approx_kl"], torch.tensor(sum(0.5 * v * v for v in log_r) / 4))
    for value in metrics.values():
        assert value.dim() == 0 and not value.requires_grad


def test_ppo_clip_gradients():
    # d/dlogp of -A·r is -A·r where unclipped; 0 where the clipped branch wins
    # t0: clipped → 0; t1: clipped → 0; t2: -1·1.1 = -1.1; t3: -(-1)·1.5 = 1.5
    logprobs, old = _logprobs_for_ratios([1.5, 0.5, 1.1, 1.5])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, _ = ppo_clip(logprobs, old, adv, torch.ones(1, 4), ASYM)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -1.1, 1.5]]))


def test_ppo_clip_asymmetric_eps():
    # t0: A=+1, r=1.25: inside [0.8, 1.3] → -1.25; with symmetric eps 0.2 → clipped at 1.2 → -1.2
    # t1: A=-1, r=0.85: inside [0.8, ·] → 0.85; with eps_low 0.1 → clipped at 0.9 → 0.9
    logprobs, old = _logprobs_for_ratios([1.25, 0.85])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, m = ppo_clip(logprobs, old, adv, mask, ASYM)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, 0.85]]))
    assert m["clip_frac"].item() == 0.0
    loss, m = ppo_clip(logprobs, old, adv, mask, LossParams(eps_low=0.1, eps_high=0.2))
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.9]]))
    assert m["clip_frac"].item() == 1.0


def test_ppo_clip_on_policy_equals_reinforce_gradient():
    # at ratio 1 (logprobs == old), ∇(-A·r) = -A·r = -A, the REINFORCE gradient
    old = torch.tensor([[-0.5, -2.0, -1.0]])
    adv = torch.tensor([[0.7, -1.3, 2.0]])
    lp1 = old.clone().requires_grad_(True)
    lp2 = old.clone().requires_grad_(True)
    ppo_clip(lp1, old, adv, torch.ones(1, 3), LossParams())[0].sum().backward()
    reinforce(lp2, old, adv, torch.ones(1, 3), LossParams())[0].sum().backward()
    torch.testing.assert_close(lp1.grad, -adv)
    torch.testing.assert_close(lp2.grad, -adv)


def test_reinforce_value_and_gradient():
    # loss = -A·logp: -(2)(-0.5) = 1.0, -(-1)(-2) = -2.0
    logprobs = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]])
    loss, metrics = reinforce(logprobs, torch.zeros(1, 2), adv, torch.ones(1, 2), LossParams())
    torch.testing.assert_close(loss, torch.tensor([[1.0, -2.0]]))
    assert metrics == {}
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, -adv)


def test_sequence_advantages_broadcast():
    logprobs, old = _logprobs_for_ratios([1.5, 1.1])
    loss_b, _ = ppo_clip(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), ASYM)
    loss_bt, _ = ppo_clip(logprobs, old, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), ASYM)
    torch.testing.assert_close(loss_b, loss_bt)


def test_gspo_hand_case():
    # token log-ratios [0.1, 0.3] on the mask, a masked-out 5.0 is ignored: s = exp((0.1 + 0.3)/2) = exp(0.2)
    # A = 1, clip range [0.8, 1.3] contains 1.2214 → loss -s on every token; grad per token under
    # seq_mean_token_mean = -A·s/|y| = -s/2 on valid tokens, 0 on the masked one
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    logprobs = (old + torch.tensor([[0.1, 0.3, 5.0]])).requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    loss, metrics = gspo(logprobs, old, adv, mask, ASYM)
    s = math.exp(0.2)
    torch.testing.assert_close(loss, torch.full((1, 3), -s))  # all tokens share the sequence ratio
    torch.testing.assert_close(metrics["seq_ratio_mean"], torch.tensor(s))
    assert metrics["clip_frac"].item() == 0.0
    seq_mean_token_mean(loss, mask).backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-s / 2, -s / 2, 0.0]]))


def test_gspo_clipped():
    # s = exp(0.2) = 1.2214 > 1 + 0.2 with A > 0 → loss -1.2, zero gradient, clip_frac 1
    old = torch.tensor([[-1.0, -2.0]])
    logprobs = (old + torch.tensor([[0.1, 0.3]])).requires_grad_(True)
    loss, metrics = gspo(logprobs, old, torch.ones(1, 2), torch.ones(1, 2), LossParams())
    torch.testing.assert_close(loss, torch.full((1, 2), -1.2))
    assert metrics["clip_frac"].item() == 1.0
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.zeros(1, 2))


def test_gspo_gradient_matches_sequence_form():
    # token form + seq_mean_token_mean == ∇ of the sequence objective -A_i · exp(mean_t log-ratio)
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 5, generator=gen)
    base = old + 0.05 * torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    adv_seq = torch.tensor([0.5, -1.0, 2.0])
    wide = LossParams(eps_low=0.9, eps_high=0.9)  # no clipping
    lp_tok = base.clone().requires_grad_(True)
    loss, _ = gspo(lp_tok, old, adv_seq, mask, wide)
    seq_mean_token_mean(loss, mask).backward()
    lp_seq = base.clone().requires_grad_(True)
    s = torch.exp(masked_mean(lp_seq - old, mask, dim=-1))
    (-adv_seq * s).mean().backward()
    torch.testing.assert_close(lp_tok.grad, lp_seq.grad)


def test_gspo_equals_ppo_clip_for_single_token_sequences():
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(4, 3, generator=gen)
    base = old + 0.4 * torch.randn(4, 3, generator=gen)
    mask = torch.zeros(4, 3)
    mask[torch.arange(4), torch.tensor([0, 2, 1, 2])] = 1.0  # one valid token per sequence
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    lp1 = base.clone().requires_grad_(True)
    lp2 = base.clone().requires_grad_(True)
    l1, m1 = gspo(lp1, old, adv, mask, ASYM)
    l2, m2 = ppo_clip(lp2, old, adv, mask, ASYM)
    torch.testing.assert_close(l1 * mask, l2 * mask)
    torch.testing.assert_close(m1["clip_frac"], m2["clip_frac"])
    seq_mean_token_mean(l1, mask).backward()
    seq_mean_token_mean(l2, mask).backward()
    torch.testing.assert_close(lp1.grad, lp2.grad)


def test_ratio_clamp_keeps_loss_finite():
    old = torch.tensor([[-100.0]])
    logprobs = torch.tensor([[0.0]])
    for fn in LOSSES.values():
        loss, _ = fn(logprobs, old, torch.tensor([[-1.0]]), torch.ones(1, 1), LossParams())
        assert torch.isfinite(loss).all()


def test_loss_params_frozen_defaults():
    p = LossParams()
    assert (p.eps_low, p.eps_high, p.ratio_clamp) == (0.2, 0.2, 10.0)
    with pytest.raises(AttributeError):
        p.eps_low = 0.1  # type: ignore[misc]


def test_registry():
    assert LOSSES == {"reinforce": reinforce, "ppo_clip": ppo_clip, "gspo": gspo}
