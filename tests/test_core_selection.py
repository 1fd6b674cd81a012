"""Sample selection (keep all, DAPO zero-advantage filter), credit identity, and core re-exports."""

import torch

import credo.core as core
from credo.core.advantages import grpo
from credo.core.credit import CREDIT, identity
from credo.core.selection import SELECTION, keep_all, nonzero_groups


def test_keep_all():
    out = keep_all(torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1, 1, 2]))
    assert out.dtype == torch.long
    assert out.tolist() == [0, 1, 2]


def test_nonzero_groups_hand_case():
    # group 4: ±0.5 → keep; group 9: all 0 → drop; group 2: 1e-9 is below 1e-8 → drop;
    # group 6: one non-zero sample keeps the whole group (indices 6 and 7)
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 1e-9, 0.3, 0.0])
    groups = torch.tensor([4, 4, 9, 9, 2, 2, 6, 6])
    out = nonzero_groups(adv, groups)
    assert out.dtype == torch.long
    assert out.tolist() == [0, 1, 6, 7]


def test_nonzero_groups_after_grpo():
    # group 1 rewards [1, 0] → ±0.707; group 2 rewards [1, 1] (accuracy 1) → zeros → dropped
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([2, 1, 1, 2])
    assert nonzero_groups(grpo(rewards, groups), groups).tolist() == [1, 2]


def test_nonzero_groups_all_zero_is_empty():
    out = nonzero_groups(torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    assert out.dtype == torch.long and out.numel() == 0


def test_credit_identity():
    adv = torch.randn(2, 5)
    assert identity(adv, torch.zeros(2, 5, dtype=torch.long)) is adv
    assert CREDIT["none"] is identity


def test_registries_and_reexports():
    assert SELECTION == {"all": keep_all, "nonzero": nonzero_groups}
    for name in ("ADVANTAGES", "LOSSES", "AGGREGATIONS", "KL_ESTIMATORS", "CREDIT", "SELECTION"):
        assert isinstance(getattr(core, name), dict)
    assert callable(core.aggregate)
    assert core.LossParams().eps_high == 0.2
