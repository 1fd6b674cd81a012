"""`Biased`: a real TinyLM/TinyVLM whose next-token logits get +`bias` on a token a subclass's `_forced(ids)` names.

Forward and the cached step apply the same rule, so the trainer's recomputed log-probs stay comparable with the
sampler's: tests use it to make a policy write a scripted tool call (`test_multiturn.py::Scripted`) or a whole
reference trajectory (`test_multiturn_sft.py::Forced`) while everything else is the model's own distribution.
"""

from __future__ import annotations

import torch


class Biased(torch.nn.Module):
    def __init__(self, inner, bias: float) -> None:
        super().__init__()
        self.inner, self.bias, self.cfg = inner, bias, inner.cfg

    def _forced(self, ids: list[int]) -> int | None:
        """The token to push after the sequence `ids` (prompt + completion so far), or None."""
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, images=None):
        kw = {k: v for k, v in (("attention_mask", attention_mask), ("images", images)) if v is not None}
        logits = self.inner.forward(input_ids, **kw).clone()
        for b in range(input_ids.shape[0]):
            row = input_ids[b].tolist()
            for t in range(len(row)):
                f = self._forced(row[: t + 1])
                if f is not None:
                    logits[b, t, f] += self.bias
        return logits

    def new_cache(self, batch_size, max_len):
        return self.inner.new_cache(batch_size, max_len), [[] for _ in range(batch_size)]

    def step(self, input_ids, cache, attention_mask=None, images=None):
        inner_cache, hist = cache
        kw = {} if images is None else {"images": images}
        logits = self.inner.step(input_ids, inner_cache, attention_mask, **kw).clone()
        for b in range(input_ids.shape[0]):
            keep = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool().cpu()]
            hist[b] += keep.tolist()
            f = self._forced(hist[b])
            if f is not None:
                logits[b, -1, f] += self.bias
        return logits
