"""Loss aggregation: per-token loss [B, T] and 0/1 loss_mask [B, T] → a scalar.

The three modes differ only in how tokens are weighted, which is most of what separates GRPO, DAPO and
Dr.GRPO (cf. verl ``agg_loss``). All take ``norm_len`` so they share one signature; only
``seq_mean_token_sum_norm`` uses it. Empty masks give 0 while keeping the autograd graph.
"""

from __future__ import annotations

from torch import Tensor


def token_mean(loss: Tensor, loss_mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Token-level mean (DAPO, arXiv 2503.14476): L = Σ_i Σ_t ℓ_{i,t} m_{i,t} / Σ_i Σ_t m_{i,t}.

    Every token weighs the same, so long sequences weigh more. ``norm_len`` is ignored.
    """
    mask = loss_mask.to(loss.dtype)  # [B, T]
    return (loss * mask).sum() / mask.sum().clamp_min(1)  # []


def seq_mean_token_mean(loss: Tensor, loss_mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Sequence mean of per-sequence token means (GRPO, DeepSeekMath arXiv 2402.03300, eq. 3).

    L = (1/G') Σ_i (1/|o_i|) Σ_t ℓ_{i,t}, over the G' sequences with at least one masked token.
    Departure: sequences with no masked token are left out of the mean (the paper has none).
    ``norm_len`` is ignored.
    """
    mask = loss_mask.to(loss.dtype)  # [B, T]
    n_tokens = mask.sum(-1)  # [B]
    seq_loss = (loss * mask).sum(-1) / n_tokens.clamp_min(1)  # [B]
    has_tokens = (n_tokens > 0).to(loss.dtype)  # [B]
    return (seq_loss * has_tokens).sum() / has_tokens.sum().clamp_min(1)  # []


def seq_mean_token_sum_norm(loss: Tensor, loss_mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Constant-normaliser sum (Dr.GRPO, arXiv 2503.20783): L = Σ_i Σ_t ℓ_{i,t} m_{i,t} / (B · L_max).

    L_max = ``norm_len`` if given (e.g. the generation budget), else the padded length T.
    Departure from verl's ``seq-mean-token-sum-norm``, which divides by L only (not B·L): here the scale
    does not grow with the batch size, matching the paper's 1/(G·L_max).
    """
    mask = loss_mask.to(loss.dtype)  # [B, T]
    length = norm_len if norm_len is not None else loss.shape[-1]
    return (loss * mask).sum() / (loss.shape[0] * length)  # []


def aggregate(loss: Tensor, loss_mask: Tensor, mode: str, norm_len: int | None = None) -> Tensor:
    """Aggregate a per-token loss [B, T] with the mode named ``mode`` (a key of ``AGGREGATIONS``) → [].

    Raises KeyError naming the valid modes when ``mode`` is unknown.
    """
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise KeyError(f"unknown aggregation mode {mode!r}; valid modes: {sorted(AGGREGATIONS)}") from None
    return fn(loss, loss_mask, norm_len)  # []


def denominator(loss_mask: Tensor, mode: str, norm_len: int | None = None) -> float:
    """The normaliser D of mode ``mode``: ``aggregate(loss, mask) = N / D`` where N is a sum over rows, so a batch
    split across data-parallel ranks aggregates as Σ_r N_r / Σ_r D_r (verl's and TRL's global normalisation).

    token_mean: D = Σ m (trained tokens); seq_mean_token_mean: D = G' (rows with a trained token);
    seq_mean_token_sum_norm: D = B · L_max (exact across ranks when ``norm_len`` is given: T differs per rank).
    Raises KeyError naming the valid modes when ``mode`` is unknown.
    """
    if mode not in DENOMINATORS:
        raise KeyError(f"unknown aggregation mode {mode!r}; valid modes: {sorted(AGGREGATIONS)}")
    return float(DENOMINATORS[mode](loss_mask.float(), norm_len))


AGGREGATIONS = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}
DENOMINATORS = {  # (loss_mask [B, T] float, norm_len) -> D, see `denominator`
    "token_mean": lambda m, L: m.sum(),
    "seq_mean_token_mean": lambda m, L: (m.sum(-1) > 0).sum(),
    "seq_mean_token_sum_norm": lambda m, L: m.shape[0] * (L if L is not None else m.shape[-1]),
}
