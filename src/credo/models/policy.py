"""What the trainer and the native generation backend need from a model: `Policy` and `Decoder`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch


class Policy(Protocol):
    """The trainer's view of a causal LM: `forward` scores whole right-padded sequences [B, T] and returns logits
    [B, T, V] (`trainer.logprobs` turns them into per-token log-probs at once); `parameters` are what the optimizer
    updates. Vision policies also take `images=` (per row, a list of images) in `forward`; callers pass it only when
    a row has images. Sampling is not the policy's business: it goes through a `rollout.backend.Generator`."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


class Decoder(Protocol):
    """Step decoding with a KV cache, what the native backend (`rollout.native`, kernel `rollout.sampler`) drives.

    `new_cache(B, S)` preallocates room for S positions; `step(ids [B, t], cache, attention_mask [B, t])` appends
    t tokens (t > 1 for the prompt, 1 while decoding; mask False = left padding) and returns logits [B, t, V] (or
    only the last position's, [B, 1, V]: the sampler reads `[:, -1]`). Vision decoders also take `images=` in the
    prefill `step`. `parameters` gives the device. Implementations: `TinyLM` / `TinyVLM` (also the native engine of
    Hugging Face Llama-family models), `HFPolicy` / `HFVLMPolicy` through the model's own cache.
    """

    def new_cache(self, batch_size: int, max_len: int) -> Any: ...

    def step(
        self, input_ids: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...
