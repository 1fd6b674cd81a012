"""Issue 12, kind 13: dual-clip PPO (Ye et al. 2020; verl clip_ratio_c), an option off by default; k2 gradient."""

import math

import pytest
import torch

from credo.core.kl import k1, k2
from credo.core.losses import LossParams, gspo, ppo_clip
from credo.trainer.config import ConfigError, RLConfig, load_config

DUAL = LossParams(eps_low=0.2, eps_high=0.3, clip_ratio_c=3.0)  # clip range [0.8, 1.3], cap −3·A for A < 0


def _logprobs_for_ratios(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0] * len(ratios)])
    logprobs = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return logprobs, old


# token: A, ratio → PPO-clip ℓ = max(−A·r, −A·clip(r, 0.8, 1.3)) → dual clip (A < 0 only): min(ℓ, −3·A)
# t0: −1, 5.0 → max(5, 1.3) = 5      → min(5, 3) = 3        (capped)
# t1: −2, 4.0 → max(8, 2.6) = 8      → min(8, 6) = 6        (capped)
# t2: −1, 2.0 → max(2, 1.3) = 2      → min(2, 3) = 2        (below the cap)
# t3: −1, 0.5 → max(0.5, 0.8) = 0.8  → 0.8                  (clipped below, the cap does not act)
# t4: +1, 5.0 → max(−5, −1.3) = −1.3 → −1.3                 (A > 0: dual clip never acts)
# t5: −0.5, 1.1 → max(0.55, 0.55) = 0.55 → min(0.55, 1.5) = 0.55 (inside the clip range)
RATIOS = [5.0, 4.0, 2.0, 0.5, 5.0, 1.1]
ADV = torch.tensor([[-1.0, -2.0, -1.0, -1.0, 1.0, -0.5]])


def test_dual_clip_hand_values_and_metrics():
    logprobs, old = _logprobs_for_ratios(RATIOS)
    mask = torch.ones(1, 6)
    loss, m = ppo_clip(logprobs, old, ADV, mask, DUAL)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 6.0, 2.0, 0.8, -1.3, 0.55]]))
    # clip_frac counts the PPO clip alone (t3, t4 strictly; t0, t1, t2, t5 take the unclipped branch): 2/6
    torch.testing.assert_close(m["clip_frac"], torch.tensor(2 / 6))
    torch.testing.assert_close(m["clip_frac_lower"], torch.tensor(2 / 6))  # t0, t1
    # the mask: only t1 and t4 counted → 1 of 2 capped
    _, m = ppo_clip(logprobs, old, ADV, torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]), DUAL)
    torch.testing.assert_close(m["clip_frac_lower"], torch.tensor(0.5))


def test_dual_clip_gradients():
    # d/dlogp of −A·r is −A·r where the unclipped branch wins; 0 where clipped or capped
    # t0, t1 capped → 0; t2: −(−1)·2 = 2; t3 clipped → 0; t4 clipped → 0; t5: −(−0.5)·1.1 = 0.55
    logprobs, old = _logprobs_for_ratios(RATIOS)
    loss, _ = ppo_clip(logprobs, old, ADV, torch.ones(1, 6), DUAL)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0, 0.55]]))


def test_off_by_default_and_off_equals_plain_ppo():
    assert LossParams().clip_ratio_c is None and RLConfig().clip_ratio_c is None
    logprobs, old = _logprobs_for_ratios(RATIOS)
    plain = LossParams(eps_low=0.2, eps_high=0.3)
    ref, m_ref = ppo_clip(logprobs, old, ADV, torch.ones(1, 6), plain)
    torch.testing.assert_close(ref, torch.tensor([[5.0, 8.0, 2.0, 0.8, -1.3, 0.55]]))
    assert "clip_frac_lower" not in m_ref
    off, m_off = ppo_clip(logprobs, old, ADV, torch.ones(1, 6), LossParams(eps_low=0.2, eps_high=0.3, clip_ratio_c=0))
    torch.testing.assert_close(off, ref)
    assert m_off.keys() == m_ref.keys()


@pytest.mark.parametrize("c", [1.0, 0.5, -2.0])
def test_dual_clip_constant_must_exceed_one(c):
    with pytest.raises(ValueError, match="clip_ratio_c"):
        LossParams(clip_ratio_c=c)


def test_config_field():
    assert load_config(overrides=["rl.clip_ratio_c=3"]).rl.clip_ratio_c == 3.0
    assert load_config(overrides=["rl.clip_ratio_c=0"]).rl.clip_ratio_c == 0.0  # off
    with pytest.raises(ConfigError, match="rl.clip_ratio_c"):
        load_config(overrides=["rl.clip_ratio_c=0.9"])


def test_gspo_ignores_dual_clip():
    logprobs, old = _logprobs_for_ratios([5.0, 5.0])
    adv, mask = torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2)
    with_c, _ = gspo(logprobs, old, adv, mask, DUAL)
    without, _ = gspo(logprobs, old, adv, mask, LossParams(eps_low=0.2, eps_high=0.3))
    torch.testing.assert_close(with_c, without)
    torch.testing.assert_close(with_c, torch.tensor([[5.0, 5.0]]))  # s = 5 for both tokens, A < 0: −A·s = 5


def test_k2_gradient_is_k1_times_grad_logp():
    # k2 = ½(log π − log π_ref)²: d k2 / d log π = log π − log π_ref = k1 (per token), i.e. ∇k2 = k1·∇log π
    logprobs = torch.tensor([[-0.5, -2.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.5, -1.0]])
    k2(logprobs, ref).sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.5, -0.5, 0.0]]))
    torch.testing.assert_close(logprobs.grad, k1(logprobs, ref).detach())
    # ∇k1 itself is 1 per token (d/d log π of log π − log π_ref), not k2's gradient
    lp = logprobs.detach().clone().requires_grad_(True)
    k1(lp, ref).sum().backward()
    assert lp.grad.tolist() == [[1.0, 1.0, 1.0]]
    assert math.isclose(float(k2(logprobs.detach(), ref)[0, 0]), 0.125)
