"""Per-token segment labels from a completion's tags: perception, answer, or reasoning (MoCA's routing input).

    seg, metrics = segment_ids_from_text(sample.completion_ids, tokenizer)   # LongTensor [C] of SEGMENTS ids

Blocks are found in the decoded text by `envs/blocks.py::block_spans` (the same reading the verifiers use):
characters of a `<perception>` block are perception, of an `<answer>` block answer, everything else (`<think>`
blocks, free text, stray tags) reasoning; the tags belong to the block they delimit. An unclosed block runs to the
end of the text, or to the next opening tag of another kind. Characters map to tokens through the cumulative
decoded lengths of the actual ids (`analysis/strategic_grams.py::token_char_ends`; CharTokenizer: one character
per non-special id), not by re-tokenising the text. A token takes the label of its first character; a token that
decodes to nothing (EOS, other specials) takes the label of the token before it (reasoning when first).

Metrics (per completion): `segments/unclosed` (blocks without their closing tag), `segments/missing_perception`,
`segments/missing_answer` (1 when there is no such block), `segments/stray_close`, and the token counts
`segments/perception_tokens`, `segments/answer_tokens`, `segments/reasoning_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from credo.analysis.strategic_grams import token_char_ends
from credo.data import SEGMENTS, Sample
from credo.envs.blocks import block_spans

LABELS = {"perception": SEGMENTS["perception"], "answer": SEGMENTS["answer"]}  # other blocks: reasoning


class _Decoder:
    """Wraps a bare `decode(ids) -> str` function as a tokenizer for `token_char_ends`."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode


def segment_ids_from_text(
    completion_ids: torch.Tensor | Sequence[int], tokenizer: Any, text: str | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Labels [C] (values of `SEGMENTS`) for one completion, and its segment metrics.

    `tokenizer` is a tokenizer with `decode(ids)` or a bare decode function; `text` defaults to the decoded ids.

    >>> from credo.models.tokenizer import CharTokenizer
    >>> tok = CharTokenizer()
    >>> seg, m = segment_ids_from_text(tok.encode("<answer>7</answer>x"), tok)
    >>> seg.tolist() == [2] * 18 + [1], m["segments/missing_perception"]
    (True, 1.0)
    """
    ids = completion_ids.tolist() if isinstance(completion_ids, torch.Tensor) else [int(i) for i in completion_ids]
    if not hasattr(tokenizer, "decode"):
        tokenizer = _Decoder(tokenizer)
    if text is None:
        text = tokenizer.decode(ids)
    spans, block_metrics = block_spans(text)
    chars = torch.full((len(text) + 1,), SEGMENTS["reasoning"], dtype=torch.long)  # [L + 1]; last: past the end
    for kind, s, e in spans:
        if kind in LABELS:
            chars[s:e] = LABELS[kind]
    seg = torch.full((len(ids),), SEGMENTS["reasoning"], dtype=torch.long)  # [C]
    if ids:
        ends = torch.tensor(token_char_ends(ids, tokenizer)).clamp(max=len(text))  # [C]
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])  # [C]
        seg = chars[starts]  # [C]: the label of each token's first character
        empty = ends == starts  # tokens that decode to nothing inherit from the token before
        for k in torch.nonzero(empty).flatten().tolist():
            seg[k] = seg[k - 1] if k > 0 else SEGMENTS["reasoning"]
    metrics = {
        "segments/unclosed": block_metrics["blocks/unclosed"],
        "segments/stray_close": block_metrics["blocks/stray_close"],
        "segments/missing_perception": block_metrics["blocks/missing_perception"],
        "segments/missing_answer": block_metrics["blocks/missing_answer"],
    }
    for name in ("perception", "answer", "reasoning"):
        metrics[f"segments/{name}_tokens"] = float((seg == SEGMENTS[name]).sum())
    return seg, metrics


def label_samples(samples: Sequence[Sample], tokenizer: Any) -> dict[str, float]:
    """Relabel each sample's `reasoning` tokens as perception / answer / reasoning from its text; tokens with other
    labels (tool calls, observations) keep theirs. Returns the metrics averaged over samples."""
    sums: dict[str, float] = {}
    for s in samples:
        seg, m = segment_ids_from_text(s.completion_ids, tokenizer)
        keep = s.segment_ids != SEGMENTS["reasoning"]
        s.segment_ids = torch.where(keep, s.segment_ids, seg)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
    n = max(1, len(samples))
    return {k: v / n for k, v in sums.items()}


__all__ = ["label_samples", "segment_ids_from_text"]
