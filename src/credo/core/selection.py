"""Sample selection: sequence advantages [B] and group_ids [B] → LongTensor of kept sample indices.

Signature: ``fn(advantages, group_ids, generator=None) -> indices``; ``generator`` serves the random
selectors (e.g. SSR replay); deterministic ones ignore it. Returned indices are sorted ascending.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ZERO_ADV = 1e-8


def keep_all(advantages: Tensor, group_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep every sample: indices 0 … B−1 (plain GRPO)."""
    return torch.arange(advantages.shape[0], device=advantages.device)  # [B]


def nonzero_groups(advantages: Tensor, group_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep samples whose group has a non-zero advantage (DAPO dynamic sampling filter, arXiv 2503.14476).

    keep i ⇔ ∃ j with g(j) = g(i) and |A_j| > 1e-8. A group whose rewards are all equal (accuracy 0 or 1)
    has zero advantage everywhere and gives no policy gradient, so it is dropped.
    Departure: the paper drops groups with accuracy ∈ {0, 1} and re-samples until the batch is full; here
    only the filter is done (on advantages, so it also works for non-binary rewards); refilling the batch
    is the trainer's job.
    """
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [B]
    n_groups = uniq.numel()
    informative = (advantages.abs() > _ZERO_ADV).long()  # [B]
    per_group = torch.zeros(n_groups, dtype=torch.long, device=advantages.device)
    per_group = per_group.index_add_(0, inverse, informative)  # [G]
    return torch.nonzero(per_group[inverse] > 0, as_tuple=True)[0]  # [B_kept]


SELECTION = {"all": keep_all, "nonzero": nonzero_groups}
