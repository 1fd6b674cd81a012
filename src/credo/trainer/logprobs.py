"""Per-token log-probs of right-padded sequences under the policy, as the losses need them."""

from __future__ import annotations

import torch

from credo.core.stats import logprobs_from_logits, token_entropy
from credo.models.policy import Policy


def sequence_logprobs(
    policy: Policy,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    images: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(x_t | x_<t) at every position t ≥ 1 (position 0 gets 0); logits scaled by 1/temperature
    exactly as in the sampler. `images`: per row, the row's images (vision policies). Returns logprobs [B, T]
    and, optionally, token entropies [B, T]."""
    out = policy.forward(input_ids) if images is None else policy.forward(input_ids, images=images)
    logits = out[:, :-1].float()  # [B, T-1, V]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lp = logprobs_from_logits(logits, input_ids[:, 1:])  # [B, T-1]
    zero = lp.new_zeros(lp.shape[0], 1)
    lp = torch.cat([zero, lp], dim=1)  # [B, T]
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = torch.cat([zero, token_entropy(logits.detach())], dim=1)  # [B, T]
    return lp, ent
