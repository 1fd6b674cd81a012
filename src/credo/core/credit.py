"""Token credit transforms: token advantages [B, T] and per-token segment labels [B, T] → advantages [B, T].

A credit transform redistributes a sequence's advantage over its tokens (HICRA amplifies planning tokens;
MoCA routes credit to perception or reasoning segments). Signature:
``fn(advantages, segment_ids, params=None) -> advantages``; ``params`` is the method's own constants.
"""

from __future__ import annotations

from torch import Tensor


def identity(advantages: Tensor, segment_ids: Tensor, params: object | None = None) -> Tensor:
    """No credit transform: A'_{i,t} = A_{i,t} (the outcome advantage on every token, as in GRPO).

    ``segment_ids`` and ``params`` are unused. Returns the input tensor itself, not a copy.
    """
    return advantages  # [B, T]


CREDIT = {"none": identity}
