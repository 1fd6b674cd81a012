"""The `Policy` protocol: what the sampler and the trainer need from a model."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Policy(Protocol):
    """A causal LM. `forward` scores whole right-padded sequences; `step` decodes with a KV cache.

    `new_cache(B, S)` preallocates room for S positions; `step(ids [B, t], cache, attention_mask [B, t])`
    appends t tokens (t > 1 for the prompt, 1 while decoding) and returns logits [B, t, V] (or only the last
    position's, [B, 1, V]: the sampler reads `[:, -1]`). Vision policies also take `images=` (per row, a list
    of images) in `forward` and in the prefill `step`; callers pass it only when a row has images.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int) -> Any: ...

    def step(
        self, input_ids: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def parameters(self) -> Any: ...
