"""Masked statistics, log-probabilities, entropies and the unbiased pass@k estimator.

Masks are 0/1 tensors (bool or float) broadcastable to the data; a zero count gives 0, never NaN.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is 1: Σ x·m.

    With ``dim=None`` the result is 0-dim; otherwise ``dim`` is reduced.
    """
    xm = x * mask.to(x.dtype)  # same shape as x
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the masked positions: Σ x·m / Σ m.

    A slice with no masked position gives 0 (the count is clamped to 1, which keeps the autograd graph).
    """
    count = masked_sum(torch.ones_like(x), mask, dim)  # [] or x.shape without dim
    return masked_sum(x, mask, dim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all masked positions: Σ m·(x − μ)² / (N − 1) (``N`` if not unbiased).

    Departure from verl's ``masked_var`` (which raises when N ≤ 1): N ≤ 1 gives 0.
    """
    count = masked_sum(torch.ones_like(x), mask)  # []
    mean = masked_mean(x, mask)  # []
    sq_sum = masked_sum((x - mean) ** 2, mask)  # []
    denom = (count - 1) if unbiased else count
    return sq_sum / denom.clamp_min(1)  # []


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with the masked mean and variance: (x − μ) / sqrt(σ² + 1e-8).

    With ``shift_mean=False`` the mean is added back, so only the scale changes. Positions outside the
    mask are transformed too; their values carry no meaning.
    """
    mean = masked_mean(x, mask)  # []
    var = masked_var(x, mask)  # []
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # same shape as x
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of ``labels`` under softmax(``logits``): log π(y_t) = z_{t,y_t} − logsumexp_v z_{t,v}.

    Shapes: logits [B, T, V], labels [B, T] → [B, T]. The full log_softmax [B, T, V] is never built.
    Computed in the dtype of ``logits``; pass float32 logits when precision matters.
    """
    picked = logits.gather(-1, labels.unsqueeze(-1).long()).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(``logits``) per position: H = logsumexp(z) − Σ_v p_v z_v.

    Shapes: [B, T, V] → [B, T]. Stable for large finite logits (no log of a tiny probability is taken).
    """
    probs = torch.softmax(logits, dim=-1)  # [B, T, V]
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # [B, T]


def logprob_diff(logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sampler/trainer mismatch on the trained tokens: mean |log π_train − log π_sampler| and the k3 estimate of
    KL(π_sampler ‖ π_train) from the sampled tokens (Schulman 2020): with log r = log π_train − log π_sampler,
    k3 = r − 1 − log r ≥ 0, averaged over the masked tokens (log r clamped to ±20 as in ``kl.k3``).

    Shapes: logprobs, sampler_logprobs, mask [B, T] → two 0-dim tensors (0 when the mask is empty).
    Detached: a diagnostic (verl's ``rollout_probs_diff``, the training/inference mismatch of engine and dtype).
    """
    delta = logprobs.detach() - sampler_logprobs.detach()  # [B, T]
    log_r = delta.clamp(-20.0, 20.0)  # [B, T]
    k3 = torch.exp(log_r) - 1.0 - log_r  # [B, T]
    return masked_mean(delta.abs(), mask), masked_mean(k3, mask)


def truncated_is_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS) weights of the sampled tokens: w = min(π_old / π_sampler, C), with π_old
    the trainer's recomputed log-probs and π_sampler the rollout engine's (Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"; verl ``rollout_is``, TRL ``vllm_importance_sampling_cap``).
    Multiplying each token's policy loss by w corrects the gradient for the engine/trainer mismatch; the cap bounds
    the variance. Computed as exp(min(log π_old − log π_sampler, log C)), so no ratio overflows.

    Shapes: old_logprobs, sampler_logprobs [B, T] → weights [B, T] (detached, > 0). Raises ValueError for C ≤ 0.
    """
    if cap <= 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    log_ratio = (old_logprobs.detach() - sampler_logprobs.detach()).clamp(max=math.log(cap))  # [B, T]
    return torch.exp(log_ratio)  # [B, T]


def _check_pass_at_k_args(n: int, k: int) -> None:
    if n < 0 or k < 0:
        raise ValueError(f"pass@k needs n >= 0 and k >= 0, got n={n}, k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n, got n={n}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, Codex, arXiv 2107.03374).

    pass@k = 1 − C(n−c, k) / C(n, k), computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i); 1.0 when n − c < k.
    Raises ValueError for negative arguments, k > n or c > n.
    """
    _check_pass_at_k_args(n, k)
    if c < 0 or c > n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_batch(n_correct: Tensor, n: int, k: int) -> Tensor:
    """Per-problem unbiased pass@k (Chen et al. 2021), vectorised over problems.

    Same estimator as ``pass_at_k``: 1 − Π_{i=n−c_p+1}^{n} (1 − k/i) for each problem p.
    Shapes: n_correct [P] (long) → [P] float32. Not averaged: the caller takes the mean it wants.
    """
    _check_pass_at_k_args(n, k)
    c = n_correct.long()  # [P]
    if c.numel() and (bool((c < 0).any()) or bool((c > n).any())):
        raise ValueError(f"pass@k needs 0 <= n_correct <= n={n}")
    i = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)  # [n]
    factors = 1.0 - k / i  # [n]
    active = i[None, :] > (n - c)[:, None]  # [P, n]
    prod = torch.where(active, factors[None, :], torch.ones_like(factors)[None, :]).prod(-1)  # [P]
    result = torch.where((n - c) < k, torch.ones_like(prod), 1.0 - prod)  # [P]
    return result.to(torch.float32)  # [P]


def maj_at_k(counts: list[int], correct: list[bool], k: int) -> float:
    """Unbiased maj@k: the expected accuracy of a majority vote over k samples drawn without replacement from
    n = Σ counts samples, averaged over all C(n, k) subsets (the combinatorial estimator, not best-of-n).

    `counts[a]` samples gave answer class a; `correct[a]` says whether class a is right. A vote tied between
    the top classes is broken uniformly at random, so a tie of a correct class with t others counts 1/(t+1).

        maj@k = Σ_{a correct} Σ_{j≥1} C(c_a, j) · W_a(j) / C(n, k),
        W_a(j) = Σ over picks of k−j samples from the other classes, each class taking ≤ j, of 1/(1 + #classes at j)

    W is computed exactly by dynamic programming over the other classes (picks so far × ties so far).

    >>> maj_at_k([2, 1], [True, False], 2)  # {a,a} wins; {a,b} twice is a tie: (1 + ½ + ½) / 3
    0.6666666666666666
    """
    import math

    n = sum(counts)
    _check_pass_at_k_args(n, k)
    if len(counts) != len(correct) or any(c < 0 for c in counts):
        raise ValueError("maj@k needs one non-negative count per answer class and one correctness flag each")
    if k == 0:
        return 0.0
    total = 0.0
    for a, (c_a, ok) in enumerate(zip(counts, correct, strict=True)):
        if not ok or c_a == 0:
            continue
        others = [c for b, c in enumerate(counts) if b != a and c > 0]
        for j in range(1, min(c_a, k) + 1):
            rest = k - j
            # ways[s][t]: ways to pick s samples from the classes seen so far, t of them tied with j picks
            ways = [[0] * (len(others) + 1) for _ in range(rest + 1)]
            ways[0][0] = 1
            for m in others:
                new = [[0] * (len(others) + 1) for _ in range(rest + 1)]
                for s in range(rest + 1):
                    for t in range(len(others) + 1):
                        if ways[s][t]:
                            for x in range(min(m, j, rest - s) + 1):
                                new[s + x][t + (x == j)] += ways[s][t] * math.comb(m, x)
                ways = new
            weighted = sum(ways[rest][t] / (1 + t) for t in range(len(others) + 1))
            total += math.comb(c_a, j) * weighted
    return total / math.comb(n, k)


def paired_gain(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean paired difference and its standard error: d_i = after_i − before_i over items i (the same problems
    scored twice, e.g. held-out correctness at the start and the end of a run, pooled over seeds),

        gain = mean(d),  SE = sd(d) / √n  with the sample sd (n − 1).

    Returns (gain, SE); SE is 0.0 for one item. Raises ValueError for unequal lengths or no items.

    >>> gain, se = paired_gain([0, 0, 1], [1, 1, 1])  # d = (1, 1, 0): mean 2/3, sd √(1/3), SE √(1/3)/√3 = 1/3
    >>> round(gain, 12), round(se, 12)
    (0.666666666667, 0.333333333333)
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"paired_gain needs two equal, non-empty lists, got {len(before)} and {len(after)}")
    d = [float(a) - float(b) for b, a in zip(before, after, strict=True)]
    n = len(d)
    gain = sum(d) / n
    if n == 1:
        return gain, 0.0
    var = sum((x - gain) ** 2 for x in d) / (n - 1)
    return gain, math.sqrt(var / n)


def seed_difference(a: list[float], b: list[float], max_splits: int = 200_000) -> tuple[float, float, float]:
    """Do two groups of runs differ? `a`, `b`: one number per seed (e.g. each run's RL gain under two settings).

        diff = mean(a) − mean(b),   SE = √(s_a²/n_a + s_b²/n_b)   (Welch; sample variances, n − 1)
        p    = share of the C(n_a + n_b, n_a) relabellings of the pooled values whose |mean difference| ≥ |diff|
               (exact two-sided permutation test over seeds: no normality assumed)

    Returns (diff, SE, p). Raises ValueError when a group has fewer than 2 values or the relabellings exceed
    `max_splits`.

    >>> d, se, p = seed_difference([1.0, 2.0], [4.0, 5.0])  # diff −3; SE √(0.5/2 + 0.5/2); 2 of 6 splits as far
    >>> round(d, 12), round(se, 12), round(p, 12)
    (-3.0, 0.707106781187, 0.333333333333)
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"seed_difference needs at least 2 values per group, got {len(a)} and {len(b)}")
    n = len(a) + len(b)
    if math.comb(n, len(a)) > max_splits:
        raise ValueError(f"seed_difference: {math.comb(n, len(a))} relabellings exceed max_splits={max_splits}")
    diff = sum(a) / len(a) - sum(b) / len(b)
    var = [sum((x - sum(g) / len(g)) ** 2 for x in g) / (len(g) - 1) for g in (a, b)]
    se = math.sqrt(var[0] / len(a) + var[1] / len(b))
    pooled, total = [float(x) for x in (*a, *b)], float(sum(a) + sum(b))
    hits = splits = 0
    for idx in itertools.combinations(range(n), len(a)):
        sa = sum(pooled[i] for i in idx)
        splits += 1
        hits += abs(sa / len(a) - (total - sa) / len(b)) >= abs(diff) - 1e-12
    return diff, se, hits / splits
