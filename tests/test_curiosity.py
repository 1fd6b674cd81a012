"""Pixel Reasoner's curiosity reward on hand-computed groups, paper form and released-code form."""

import pytest
import torch

from credo.rewards.curiosity import curiosity_bonus, curiosity_rewards


def _t(*v):
    return torch.tensor(v, dtype=torch.float)


def test_paper_form_hand_computed():
    # RaPR = 1/4: the tool user gets α·(0.3 − 0.25) = 0.025 and pays β·min(1 − 2, 0) = −0.05 for its 2nd op.
    b = curiosity_bonus(_t(1, 0, 0, 0).bool(), _t(2, 0, 0, 0))
    assert torch.allclose(b, _t(-0.025, 0, 0, 0))
    # RaPR = 1/2 ≥ H: no bonus; only the extra operations cost β each.
    b = curiosity_bonus(_t(1, 1, 0, 0).bool(), _t(1, 3, 0, 0))
    assert torch.allclose(b, _t(0, -0.1, 0, 0))
    # 1 of 10 explores: α·(0.3 − 0.1) = 0.1.
    used = torch.zeros(10, dtype=torch.bool)
    used[3] = True
    b = curiosity_bonus(used, used.float())
    assert b[3].item() == pytest.approx(0.1) and b.sum().item() == pytest.approx(0.1)


def test_code_form_hand_computed():
    # c = max(0.3 − 0.25, 0) / 2 / 0.25 · 0.25 = 0.025 (image); / 1.5 for video
    b = curiosity_bonus(_t(1, 0, 0, 0).bool(), _t(1, 0, 0, 0), variant="code")
    assert torch.allclose(b, _t(0.025, 0, 0, 0))
    b = curiosity_bonus(_t(1, 0, 0, 0).bool(), _t(1, 0, 0, 0), variant="code", video=True)
    assert torch.allclose(b, _t(0.05 / 1.5, 0, 0, 0))
    # 3 calls: −0.05·(3 − 1) = −0.1 on top of the bonus
    b = curiosity_bonus(_t(1, 0, 0, 0).bool(), _t(3, 0, 0, 0), variant="code")
    assert torch.allclose(b, _t(0.025 - 0.1, 0, 0, 0))
    # 1 of 10: 0.2 / 2 / 0.1 · 0.25 = 0.25 (the paper form gives 0.1: the division by RaPR differs)
    used = torch.zeros(10, dtype=torch.bool)
    used[0] = True
    assert curiosity_bonus(used, used.float(), variant="code")[0].item() == pytest.approx(0.25)


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_no_tool_use_gives_zero_and_no_nan(variant):
    b = curiosity_bonus(torch.zeros(4, dtype=torch.bool), torch.zeros(4), variant=variant)
    assert torch.equal(b, torch.zeros(4))


def test_batch_of_groups_and_unknown_variant():
    r = _t(1, 0, 0, 0, 1, 1)
    used = _t(1, 0, 0, 0, 1, 1).bool()
    n = _t(1, 0, 0, 0, 1, 2)
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    out = curiosity_rewards(r, used, n, g)
    # group 0: RaPR 0.25 → +0.025 for row 0; group 1: RaPR 1 → no bonus, row 5 pays 0.05
    assert torch.allclose(out, _t(1.025, 0, 0, 0, 1, 0.95))
    with pytest.raises(ValueError, match="variant"):
        curiosity_bonus(used, n, variant="nope")
