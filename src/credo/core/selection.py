"""Sample selection: sequence advantages [B] and group_ids [B] → LongTensor of kept sample indices.

Signature: ``fn(advantages, group_ids, generator=None) -> indices``; ``generator`` serves the random
selectors; deterministic ones ignore it. Returned indices are sorted ascending.

Also here, outside the registry because they need more than a batch (a target size, a replay history):
the pure maths of VL-Rethinker's Selective Sample Replay (``nonzero_samples``, ``ssr_probs``, ``ssr_sample``,
``replay_probs``, ``replay_fill``; the persistent buffer is ``trainer/replay.py``) and of DAPO dynamic
sampling with refill (``dynamic_sampling_keep``; the re-rolling loop is ``trainer/dapo.py``).

Which groups are informative is decided in one place, ``advantages.informative_groups`` (a group is constant when
its values span ≤ 1e-6 · max(1, |mean|)); the group-level filters here call it on the sequence advantages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .advantages import informative_groups

_ZERO_ADV = 1e-8
"""Sample level only: |A_i| ≤ 1e-8 counts as zero (the float residue of a sample at its group mean)."""


def keep_all(advantages: Tensor, group_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep every sample: indices 0 … B−1 (plain GRPO)."""
    return torch.arange(advantages.shape[0], device=advantages.device)  # [B]


def nonzero_groups(advantages: Tensor, group_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep samples whose group has a non-zero advantage (DAPO dynamic sampling filter, arXiv 2503.14476).

    keep i ⇔ the group of i is informative (``advantages.informative_groups``: its advantages span more than
    1e-6 · max(1, |mean|)). A group whose rewards are all equal (accuracy 0 or 1, or any constant reward) has
    zero advantage everywhere and gives no policy gradient, so it is dropped.
    Departure: the paper drops groups with accuracy ∈ {0, 1} and re-samples until the batch is full; here
    only the filter is done (on advantages, so it also works for non-binary rewards); refilling the batch
    is the trainer's job.
    """
    return torch.nonzero(informative_groups(advantages, group_ids), as_tuple=True)[0]  # [B_kept]


def dynamic_sampling_keep(advantages: Tensor, group_ids: Tensor, target_groups: int) -> tuple[Tensor, int]:
    """DAPO dynamic sampling with refill (arXiv 2503.14476, §3.2): which samples to keep, how many groups are missing.

    Keep the informative groups (``nonzero_groups`` → ``advantages.informative_groups``), at most ``target_groups``
    of them, the ones with the smallest group ids (ids grow with each rollout round, so these are the earliest), as
    verl truncates the accumulated batch to ``train_batch_size`` groups. missing = max(0, target_groups −
    #informative groups): how many more informative groups a further rollout round must find.
    Returns (kept sample indices sorted ascending [B_kept], missing).
    """
    keep = nonzero_groups(advantages, group_ids)  # [B_inf]
    informative = torch.unique(group_ids[keep])  # [G_inf], sorted ascending
    missing = max(0, target_groups - informative.numel())
    chosen = informative[:target_groups]  # [min(G_inf, target)]
    return keep[torch.isin(group_ids[keep], chosen)], missing


# ---- Selective Sample Replay (VL-Rethinker, arXiv 2504.08837) ------------------------------------------------


def _effective(advantages: Tensor, group_ids: Tensor | None) -> Tensor:
    """SSR's effective samples, bool [B]: |A_i| > 1e-8 and, given ``group_ids``, an informative group."""
    effective = advantages.abs() > _ZERO_ADV  # [B]
    if group_ids is not None:
        effective &= informative_groups(advantages, group_ids)  # [B]
    return effective  # [B]


def nonzero_samples(advantages: Tensor, group_ids: Tensor | None = None) -> Tensor:
    """SSR's ``rule_out_zero``: indices of the samples with |A_i| > 1e-8, sorted ascending [B_eff].

    Sample level, unlike ``nonzero_groups``: a sample whose reward equals its group mean is dropped even when
    its group is informative. Given ``group_ids`` [B], the samples of groups that ``advantages.informative_groups``
    classes uninformative are dropped too (the estimators of ``ADVANTAGES`` already give them exactly 0; this
    guards advantages from elsewhere).
    """
    return torch.nonzero(_effective(advantages, group_ids), as_tuple=True)[0]  # [B_eff]


def ssr_probs(advantages: Tensor, alpha: float = 1.0, group_ids: Tensor | None = None) -> Tensor:
    """SSR selection probabilities (VL-Rethinker, arXiv 2504.08837, §3.2): P(j) = |A_j|^α / Σ_k |A_k|^α.

    The sum runs over the effective samples (``nonzero_samples(advantages, group_ids)``); the others get
    probability 0, also for α = 0 (which is then uniform over the effective samples; 0^0 would otherwise count
    them). Paper and code: α = 1. All-zero advantages give all-zero probabilities. Shapes: advantages [B] → [B].
    """
    a = advantages.abs().to(torch.float64)  # [B]
    effective = _effective(advantages, group_ids)  # [B]
    weight = torch.where(effective, a.clamp_min(_ZERO_ADV) ** alpha, torch.zeros_like(a))  # [B]
    total = weight.sum()
    return weight / total if total > 0 else weight  # [B]


def ssr_sample(
    advantages: Tensor,
    size: int,
    alpha: float = 1.0,
    replacement: bool = True,
    generator: torch.Generator | None = None,
    group_ids: Tensor | None = None,
) -> Tensor:
    """SSR draw from one batch: drop zero-advantage samples, draw ``size`` indices with P(j) ∝ |A_j|^α.

    selection ~ Categorical(p), p_j = |A_j|^α / Σ_k |A_k|^α over the effective samples (``ssr_probs``); the
    README's ``np.random.choice(effective, size, p=p)`` and the released ``active_sampling`` both draw **with
    replacement** (numpy's default), so that is the default. ``replacement=False`` draws distinct samples
    (successive sampling ∝ |A|^α, ``torch.multinomial``); it needs size ≤ #effective. ``group_ids`` [B], when
    given, also drops the samples of uninformative groups (``nonzero_samples``).
    Returns indices into ``advantages``, sorted ascending (duplicates kept), [size].
    """
    probs = ssr_probs(advantages, alpha, group_ids)  # [B]
    n_eff = int((probs > 0).sum())
    if size == 0:
        return torch.zeros(0, dtype=torch.long, device=advantages.device)
    if n_eff == 0:
        raise ValueError(f"ssr_sample: no sample with a non-zero advantage to draw {size} from")
    if not replacement and size > n_eff:
        raise ValueError(f"ssr_sample: cannot draw {size} distinct samples from {n_eff} effective ones")
    idx = torch.multinomial(probs, size, replacement=replacement, generator=generator)  # [size]
    return idx.sort().values  # [size]


def replay_probs(advantages: Tensor, eps: float = 1e-4) -> Tensor:
    """SSR replay-fill probabilities over a FIFO history of past effective samples.

    P(j) = (|A_j| + ε) / Σ_k (|A_k| + ε). The released ``active_sampling`` fills the batch from its ``keep_items``
    deque with this priority, ε = 1e-4 (its extra ×0.8 scale cancels in the normalisation).
    Shapes: advantages [N] → [N].
    """
    weight = advantages.abs().to(torch.float64) + eps  # [N]
    return weight / weight.sum()  # [N]


def replay_fill(
    advantages: Tensor, n: int, eps: float = 1e-4, generator: torch.Generator | None = None
) -> Tensor:
    """Indices of ``n`` history samples for the SSR replay fill, as the released code draws them.

    While more are needed than the history holds (n > N), every history sample is taken once, in order; the
    rest (≤ N) is drawn with replacement with P(j) = (|A_j| + ε) / Σ_k (|A_k| + ε) (``replay_probs``).
    An empty history gives no indices (the released loop would spin forever there). [≤ n], not sorted.
    """
    N = advantages.shape[0]
    if n <= 0 or N == 0:
        return torch.zeros(0, dtype=torch.long, device=advantages.device)
    full, rest = divmod(n, N)
    if rest == 0:  # n = k·N: the released `while n > N` takes k − 1 full passes, then draws N
        full, rest = full - 1, N
    passes = torch.arange(N, device=advantages.device).repeat(full)  # [full·N]
    drawn = torch.multinomial(replay_probs(advantages, eps), rest, replacement=True, generator=generator)  # [rest]
    return torch.cat([passes, drawn])  # [n]


SELECTION = {"all": keep_all, "nonzero": nonzero_groups}
