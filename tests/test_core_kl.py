"""KL estimators k1, k2, k3: hand values and a Monte-Carlo check against the exact KL."""

import math

import torch

from credo.core.kl import KL_ESTIMATORS, k1, k2, k3

LOGP = torch.tensor([[math.log(0.5)]])
REF = torch.tensor([[math.log(0.25)]])


def test_hand_values():
    # log-ratio log π − log π_ref = log 2
    # k1 = log 2 = 0.6931; k2 = ½ (log 2)² = 0.2402; k3 = e^{-log 2} + log 2 − 1 = 0.5 + 0.6931 − 1 = 0.1931
    log2 = math.log(2.0)
    torch.testing.assert_close(k1(LOGP, REF), torch.tensor([[log2]]))
    torch.testing.assert_close(k2(LOGP, REF), torch.tensor([[0.5 * log2**2]]))
    torch.testing.assert_close(k3(LOGP, REF), torch.tensor([[0.5 + log2 - 1.0]]))


def test_zero_when_equal_and_k3_non_negative():
    gen = torch.Generator().manual_seed(0)
    logp = -3 * torch.rand(4, 6, generator=gen)
    ref = -3 * torch.rand(4, 6, generator=gen)
    for fn in KL_ESTIMATORS.values():
        torch.testing.assert_close(fn(logp, logp), torch.zeros(4, 6))
    assert (k3(logp, ref) >= 0).all()
    assert (k2(logp, ref) >= 0).all()


def test_k3_is_finite_for_extreme_log_ratios():
    out = k3(torch.tensor([[0.0, -1000.0]]), torch.tensor([[-1000.0, 0.0]]))
    assert torch.isfinite(out).all()


def test_monte_carlo_unbiased():
    # p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]
    # KL(p‖q) = 0.5 ln 2.5 + 0.3 ln 1 + 0.2 ln 0.4 = 0.4581 − 0.1833 = 0.2749
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum()
    gen = torch.Generator().manual_seed(1234)
    y = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, ref = p.log()[y], q.log()[y]
    assert abs(k1(logp, ref).mean() - true_kl) < 1e-2
    assert abs(k3(logp, ref).mean() - true_kl) < 1e-2


def test_registry():
    assert KL_ESTIMATORS == {"k1": k1, "k2": k2, "k3": k3}
