"""Group-baseline advantages: hand cases, invariances, loop-vs-vectorised equivalence."""

import math

import pytest
import torch

from credo.core.advantages import ADVANTAGES, dr_grpo, grpo, rloo, to_tokens

# Two groups with non-contiguous ids: group 7 has rewards [1, 0, 0, 1], group 3 is all ones.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
GROUPS = torch.tensor([7, 7, 7, 7, 3, 3, 3, 3])


def test_grpo_hand_case():
    # group 7: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 1/sqrt(3); A = ±0.5 * sqrt(3) = ±0.8660
    # group 3: all equal → 0
    a = 0.5 * math.sqrt(3)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo(REWARDS, GROUPS), expected, atol=1e-5, rtol=0)


def test_dr_grpo_hand_case():
    # r - mean: group 7 mean 0.5 → ±0.5; group 3 → 0
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(dr_grpo(REWARDS, GROUPS), expected)


def test_rloo_hand_case():
    # r_0 = 1, others [0, 0, 1] mean 1/3 → 2/3;  r_1 = 0, others [1, 0, 1] mean 2/3 → -2/3
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(rloo(REWARDS, GROUPS), expected)


def test_non_binary_hand_case():
    # rewards [3, 1, 2]: mean 2, unbiased var (1 + 1 + 0) / 2 = 1 → grpo [1, -1, 0]
    # rloo: 3 - (1+2)/2 = 1.5; 1 - (3+2)/2 = -1.5; 2 - (3+1)/2 = 0
    r, g = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([5, 5, 5])
    torch.testing.assert_close(grpo(r, g), torch.tensor([1.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(dr_grpo(r, g), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(rloo(r, g), torch.tensor([1.5, -1.5, 0.0]))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_shift_invariance(name):
    fn = ADVANTAGES[name]
    r = torch.tensor([0.3, 1.2, -0.7, 2.0, 0.1, 0.9])
    g = torch.tensor([1, 2, 1, 2, 1, 2])
    torch.testing.assert_close(fn(r + 5.0, g), fn(r, g), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_equal_group_and_singleton_give_zero(name):
    fn = ADVANTAGES[name]
    r = torch.tensor([0.7, 0.7, 0.7, 4.0])  # group 2 all equal; group 11 of size 1
    g = torch.tensor([2, 2, 2, 11])
    out = fn(r, g)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.zeros(4))


def test_grpo_scale_invariance():
    r = torch.tensor([0.3, 1.2, -0.7, 2.0, 0.1, 0.9])
    g = torch.tensor([1, 2, 1, 2, 1, 2])
    torch.testing.assert_close(grpo(3.5 * r, g), grpo(r, g), atol=1e-5, rtol=0)


def _loop_reference(name: str, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for gid in group_ids.unique().tolist():
        idx = (group_ids == gid).nonzero().squeeze(-1)
        r = rewards[idx]
        n = r.numel()
        if n == 1:
            continue
        if name == "grpo":
            out[idx] = (r - r.mean()) / (r.std() + 1e-6)
        elif name == "dr_grpo":
            out[idx] = r - r.mean()
        else:
            out[idx] = torch.stack([r[i] - torch.cat([r[:i], r[i + 1 :]]).mean() for i in range(n)])
    return out


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_loop_vs_vectorised(name):
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 2, 3, 4, 5, 8]
    ids = torch.tensor([1000, -3, 42, 7, 19, 5])  # non-contiguous, unsorted, one negative
    group_ids = torch.cat([torch.full((s,), int(i)) for s, i in zip(sizes, ids, strict=True)])
    group_ids = group_ids[torch.randperm(group_ids.numel(), generator=gen)]  # shuffled
    rewards = torch.randn(group_ids.numel(), generator=gen, dtype=torch.float64)
    expected = _loop_reference(name, rewards, group_ids)
    torch.testing.assert_close(ADVANTAGES[name](rewards, group_ids), expected)


def test_integer_rewards_are_accepted():
    out = dr_grpo(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert out.is_floating_point()
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5]))


def test_to_tokens():
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    expected = torch.tensor([[0.0, 2.0, 2.0], [-1.0, -1.0, 0.0]])
    out = to_tokens(adv, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_registry():
    assert ADVANTAGES == {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
