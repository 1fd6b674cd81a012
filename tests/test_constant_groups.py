"""Issue 12, kind 5: a constant reward group has advantages exactly 0 and is uninformative, for every estimator."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from credo.core import constant_groups, informative_groups
from credo.core.advantages import ADVANTAGES, dr_grpo, grpo, rloo
from credo.core.selection import dynamic_sampling_keep, nonzero_groups, nonzero_samples, ssr_probs

ESTIMATORS = sorted(ADVANTAGES)


def _one_group(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize(("value", "n"), [(0.7, 8), (1.1, 16), (0.1, 8), (1 / 3, 5), (-0.35, 7), (1e6 + 0.1, 4)])
def test_issue_cases_are_exactly_zero(name, value, n):
    # the issue: grpo(full(8, 0.7)) gave +0.056 on every sample, 16 × 1.1 gave −0.106, 8 × 0.1 gave −0.0074
    rewards = torch.full((n,), value)
    adv = ADVANTAGES[name](rewards, _one_group(n))
    assert adv.dtype == torch.float32
    assert (adv == 0).all(), adv
    assert not informative_groups(rewards, _one_group(n)).any()
    assert not informative_groups(adv, _one_group(n)).any()


def test_float32_residue_was_real():
    # the cause: the float32 mean of eight 0.7 is not 0.7, and GRPO's std division amplifies the residue
    r = torch.full((8,), 0.7)
    centred = r - r.mean()
    assert centred.abs().max() > 0
    assert (centred / (r.std() + 1e-6)).abs().max() > 0.05


def test_mixed_batch_hand_values():
    # groups 3 and 8 are constant (0.7 ×3, 1.1 ×2); group 5 has rewards [0.1, 0.3]:
    #   mean 0.2, centred ±0.1; unbiased var (0.01 + 0.01)/1 = 0.02, std √0.02 = 0.1414214
    #   grpo ±0.1/(0.1414214 + 1e-6) = ±0.7071018; dr_grpo ±0.1; rloo 2/1·(±0.1) = ±0.2
    r = torch.tensor([0.7, 0.1, 0.7, 1.1, 0.3, 0.7, 1.1])
    g = torch.tensor([3, 5, 3, 8, 5, 3, 8])
    a = 0.1 / (math.sqrt(0.02) + 1e-6)
    z = [0.0, 0.0, 0.0, 0.0, 0.0]
    for fn, v in ((grpo, a), (dr_grpo, 0.1), (rloo, 0.2)):
        out = fn(r, g)
        torch.testing.assert_close(out[[1, 4]], torch.tensor([-v, v]), atol=1e-6, rtol=0)
        assert out[[0, 2, 3, 5, 6]].tolist() == z  # exactly 0, not close to 0
    assert informative_groups(r, g).tolist() == [False, True, False, False, True, False, False]
    assert constant_groups(r, g).tolist() == [True, False, True, True, False, True, True]


def test_tolerance_is_relative_above_one_absolute_below():
    g = _one_group(2)
    # span 5e-7 ≤ 1e-6·max(1, 1) → constant; span 4e-6 > 1e-6 → informative (float32 values printed below)
    assert constant_groups(torch.tensor([1.0, 1.0 + 5e-7]), g).all()
    informative = torch.tensor([1.0, 1.0 + 4e-6])  # 1 + 4.053e-6 in float32
    assert informative_groups(informative, g).all()
    span = float(informative[1].double() - informative[0].double())
    torch.testing.assert_close(dr_grpo(informative, g), torch.tensor([-span / 2, span / 2]), atol=1e-12, rtol=0)
    # around 1000 the tolerance is 1e-3: a span of 5e-4 is constant, 5e-3 is not
    assert (grpo(torch.tensor([1000.0, 1000.0005]), g) == 0).all()
    assert informative_groups(torch.tensor([1000.0, 1000.005]), g).all()
    # below |mean| = 1 the tolerance stays 1e-6 absolute: tiny but distinct rewards are constant
    assert (rloo(torch.tensor([1e-8, 3e-8]), g) == 0).all()
    assert informative_groups(torch.tensor([1e-3, 3e-3]), g).all()


def test_singletons_and_non_finite():
    # a singleton is constant and uninformative; a NaN/inf group is not constant (its NaN is not hidden behind a 0)
    # and not informative
    r = torch.tensor([4.0, float("nan"), 1.0, float("inf"), float("inf")])
    g = torch.tensor([1, 2, 2, 3, 3])
    assert constant_groups(r, g).tolist() == [True, False, False, False, False]
    assert informative_groups(r, g).tolist() == [False, False, False, False, False]
    out = grpo(r, g)
    assert out[0] == 0 and out[1:].isnan().all()


def test_integer_and_bfloat16_rewards():
    g = _one_group(3)
    assert grpo(torch.tensor([1, 1, 1]), g).dtype == torch.float32
    out = dr_grpo(torch.full((3,), 0.7, dtype=torch.bfloat16), g)
    assert out.dtype == torch.bfloat16 and (out == 0).all()


def test_selection_drops_constant_groups():
    # group 1: eight 0.7 (float residue used to survive the 1e-8 threshold as ±0.056); group 2: [0, 1]
    r = torch.tensor([0.7] * 8 + [0.0, 1.0])
    g = torch.tensor([1] * 8 + [2, 2])
    adv = grpo(r, g)
    assert nonzero_groups(adv, g).tolist() == [8, 9]
    keep, missing = dynamic_sampling_keep(adv, g, target_groups=2)
    assert keep.tolist() == [8, 9] and missing == 1
    assert nonzero_samples(adv).tolist() == [8, 9]
    assert nonzero_samples(adv, g).tolist() == [8, 9]
    torch.testing.assert_close(ssr_probs(adv, group_ids=g), torch.tensor([0.0] * 8 + [0.5, 0.5], dtype=torch.float64))


def test_ssr_group_ids_drop_uninformative_groups_from_elsewhere():
    # advantages not made by ADVANTAGES (equal and non-zero inside group 4) teach nothing about group 4's prompt
    adv = torch.tensor([0.5, 0.5, 0.25, -0.75])
    g = torch.tensor([4, 4, 6, 6])
    assert nonzero_samples(adv).tolist() == [0, 1, 2, 3]
    assert nonzero_samples(adv, g).tolist() == [2, 3]
    # P ∝ |A| over samples 2 and 3: 0.25/1.0 and 0.75/1.0
    assert ssr_probs(adv, 1.0, g).tolist() == [0.0, 0.0, 0.25, 0.75]


# ---- properties over random float32 groups ------------------------------------------------------------------

_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_FLOAT32, min_size=1, max_size=6), sizes=st.lists(st.integers(1, 40), min_size=6, max_size=6))
def test_property_constant_groups_give_exactly_zero(values, sizes):
    # any number of constant groups, each of any finite float32 value (subnormal to ±3.4e38) and any size
    rewards = torch.cat([torch.full((n,), v, dtype=torch.float32) for v, n in zip(values, sizes, strict=False)])
    group_ids = torch.cat([torch.full((n,), 10 * k + 3) for k, n in enumerate(sizes[: len(values)])])
    perm = torch.randperm(rewards.numel(), generator=torch.Generator().manual_seed(len(values)))
    rewards, group_ids = rewards[perm], group_ids[perm]
    assert not informative_groups(rewards, group_ids).any()
    for name in ESTIMATORS:
        adv = ADVANTAGES[name](rewards, group_ids)
        assert adv.dtype == torch.float32 and (adv == 0).all(), (name, adv)
        assert not informative_groups(adv, group_ids).any()
        assert nonzero_groups(adv, group_ids).numel() == 0


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(-1e4, 1e4, width=32),
    gaps=st.lists(st.floats(-1.0, 1.0, width=32), min_size=2, max_size=12),
)
def test_property_informative_on_rewards_equals_on_advantages(base, gaps):
    # one group base + gaps: the class made from the rewards and from each estimator's advantages agree,
    # and an informative group has a non-zero advantage somewhere
    rewards = torch.tensor([base + x for x in gaps], dtype=torch.float32)
    g = _one_group(len(gaps))
    by_rewards = bool(informative_groups(rewards, g)[0])
    for name in ESTIMATORS:
        adv = ADVANTAGES[name](rewards, g)
        assert bool(informative_groups(adv, g)[0]) == by_rewards, name
        assert bool((adv != 0).any()) == by_rewards, name
