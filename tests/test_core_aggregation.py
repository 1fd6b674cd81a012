"""Loss aggregation modes on a hand-computed uneven mask."""

import pytest
import torch

from credo.core import AGGREGATIONS, aggregate
from credo.core.aggregation import seq_mean_token_mean, seq_mean_token_sum_norm, token_mean

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_token_mean():
    # (1 + 2 + 4) / 3 tokens
    torch.testing.assert_close(token_mean(LOSS, MASK), torch.tensor(7 / 3))


def test_seq_mean_token_mean():
    # row means (1+2)/2 = 1.5 and 4/1 = 4 → (1.5 + 4) / 2 = 2.75
    torch.testing.assert_close(seq_mean_token_mean(LOSS, MASK), torch.tensor(2.75))


def test_seq_mean_token_sum_norm():
    # (1 + 2 + 4) / (B·T) = 7 / (2·3)
    torch.testing.assert_close(seq_mean_token_sum_norm(LOSS, MASK), torch.tensor(7 / 6))
    # norm_len overrides T: 7 / (2·7) = 0.5
    torch.testing.assert_close(seq_mean_token_sum_norm(LOSS, MASK, norm_len=7), torch.tensor(0.5))


def test_aggregate_dispatch_and_norm_len_passthrough():
    for mode, fn in AGGREGATIONS.items():
        torch.testing.assert_close(aggregate(LOSS, MASK, mode), fn(LOSS, MASK))
    torch.testing.assert_close(
        aggregate(LOSS, MASK, "seq_mean_token_sum_norm", norm_len=7), torch.tensor(0.5)
    )


def test_bad_mode_lists_valid_modes():
    with pytest.raises(KeyError, match="token_mean"):
        aggregate(LOSS, MASK, "sequence_mean")


def test_empty_sequence_is_left_out_of_seq_mean():
    # only row 0 has tokens: (1+2)/2 = 1.5, not (1.5 + 0)/2
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(seq_mean_token_mean(LOSS, mask), torch.tensor(1.5))


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_empty_mask_gives_zero_with_graph(mode):
    loss = LOSS.clone().requires_grad_(True)
    out = aggregate(loss, torch.zeros(2, 3), mode)
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(loss.grad, torch.zeros(2, 3))


def test_masked_inputs_get_no_gradient():
    loss = LOSS.clone().requires_grad_(True)
    token_mean(loss, MASK).backward()
    torch.testing.assert_close(loss.grad, MASK.float() / 3)
