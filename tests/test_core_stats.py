"""Masked statistics, log-probs and entropy from logits, and the unbiased pass@k estimator."""

import itertools
import math
import random
from fractions import Fraction

import pytest
import torch

from credo.core.stats import (
    logprobs_from_logits,
    maj_at_k,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    pass_at_k,
    pass_at_k_batch,
    token_entropy,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_and_mean():
    # masked values {1, 2, 4}: sum 7, mean 7/3; per row: sums [3, 4], means [1.5, 4]
    torch.testing.assert_close(masked_sum(X, MASK), torch.tensor(7.0))
    torch.testing.assert_close(masked_sum(X, MASK, dim=-1), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(masked_mean(X, MASK), torch.tensor(7 / 3))
    torch.testing.assert_close(masked_mean(X, MASK, dim=-1), torch.tensor([1.5, 4.0]))


def test_masked_mean_zero_count():
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(X, mask, dim=-1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(masked_mean(X, torch.zeros(2, 3)), torch.tensor(0.0))


def test_masked_var():
    # {1, 2, 4}, mean 7/3: squared deviations 16/9 + 1/9 + 25/9 = 42/9 = 14/3
    # unbiased 14/3 / 2 = 7/3; biased 14/3 / 3 = 14/9
    torch.testing.assert_close(masked_var(X, MASK), torch.tensor(7 / 3))
    torch.testing.assert_close(masked_var(X, MASK, unbiased=False), torch.tensor(14 / 9))
    single = torch.tensor([[1, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_var(X, single), torch.tensor(0.0))


def test_masked_whiten():
    # (x − 7/3) / sqrt(7/3): x=1 → (−4/3)/1.527525 = −0.872872
    w = masked_whiten(X, MASK)
    torch.testing.assert_close(w[0, 0], torch.tensor((1 - 7 / 3) / math.sqrt(7 / 3)))
    torch.testing.assert_close(masked_mean(w, MASK), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_var(w, MASK), torch.tensor(1.0))
    w_keep = masked_whiten(X, MASK, shift_mean=False)
    torch.testing.assert_close(w_keep, w + 7 / 3)


def test_logprobs_from_logits_matches_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(2, 4, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 4), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected)


def test_token_entropy():
    # uniform over V = 5 → log 5; near one-hot (100 vs 0) → ≈ 4·101·e^{-100} ≈ 0
    torch.testing.assert_close(token_entropy(torch.zeros(2, 3, 5)), torch.full((2, 3), math.log(5)))
    one_hot = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(token_entropy(one_hot), torch.zeros(1, 1), atol=1e-6, rtol=0)
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3, 7, generator=gen)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(token_entropy(logits), -(p * p.log()).sum(-1))


def _brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    # fraction of k-subsets of the n samples (the first c correct) that contain a correct one
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


CASES = [(5, 0, 1), (5, 2, 1), (5, 2, 3), (5, 5, 2), (6, 3, 4), (10, 3, 5), (8, 1, 8), (7, 4, 0), (9, 2, 2)]


@pytest.mark.parametrize(("n", "c", "k"), CASES)
def test_pass_at_k_brute_force(n, c, k):
    assert abs(pass_at_k(n, c, k) - float(_brute_force_pass_at_k(n, c, k))) < 1e-12


def test_pass_at_k_hand_values():
    # n=5, c=2, k=1: c/n = 0.4; n=5, c=2, k=3: 1 − C(3,3)/C(5,3) = 1 − 1/10 = 0.9
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-12)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-12)
    assert pass_at_k(4, 2, 3) == 1.0  # n − c = 2 < k = 3


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 4, 1), (-1, 0, 0), (3, -1, 1), (3, 1, -1)])
def test_pass_at_k_errors(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_batch():
    n, k = 10, 3
    n_correct = torch.tensor([0, 1, 3, 7, 8, 10])
    out = pass_at_k_batch(n_correct, n, k)
    assert out.shape == (6,) and out.dtype == torch.float32
    expected = torch.tensor([pass_at_k(n, c, k) for c in n_correct.tolist()])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError):
        pass_at_k_batch(torch.tensor([11]), n, k)
    with pytest.raises(ValueError):
        pass_at_k_batch(torch.tensor([1]), n, 11)


def _brute_force_maj(answers: list[str], right: set[str], k: int) -> float:
    """Majority vote over every size-k subset, ties split evenly."""
    from collections import Counter

    total, subsets = 0.0, list(itertools.combinations(range(len(answers)), k))
    for sub in subsets:
        votes = Counter(answers[i] for i in sub)
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += sum(a in right for a in winners) / len(winners)
    return total / len(subsets)


def test_maj_at_k_hand_values():
    # answers a,a,b with a right: k=1 → 2/3; k=2 → ({a,a}: 1, {a,b} ×2: ½ each) / 3 = 2/3; k=3 → 1
    assert maj_at_k([2, 1], [True, False], 1) == pytest.approx(2 / 3)
    assert maj_at_k([2, 1], [True, False], 2) == pytest.approx(2 / 3)
    assert maj_at_k([2, 1], [True, False], 3) == pytest.approx(1.0)
    # the right answer is a minority of 1 in 4 (b,b,c): k=4 → b wins outright → 0
    assert maj_at_k([1, 2, 1], [True, False, False], 4) == 0.0
    assert maj_at_k([3], [False], 2) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_maj_at_k_brute_force(seed):
    rng = random.Random(seed)
    answers = [rng.choice("abcd") for _ in range(rng.randint(3, 9))]
    right = set(rng.sample("abcd", rng.randint(1, 2)))  # sometimes two classes are both right
    classes = sorted(set(answers))
    counts = [answers.count(a) for a in classes]
    for k in range(1, len(answers) + 1):
        got = maj_at_k(counts, [a in right for a in classes], k)
        assert got == pytest.approx(_brute_force_maj(answers, right, k), abs=1e-12)


def test_maj_at_k_is_not_pass_at_k():
    # 2 right of 5, the 3 wrong ones agree: pass@5 = 1 but the vote of all five is always wrong
    assert pass_at_k(5, 2, 5) == 1.0
    assert maj_at_k([2, 3], [True, False], 5) == 0.0
