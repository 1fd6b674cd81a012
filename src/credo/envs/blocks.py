"""Tagged blocks of a completion: `<perception>…</perception>`, `<think>…</think>`, `<answer>…</answer>`.

One parser, shared by the verifiers (which claims did the policy make?) and by the per-token segment labels
(`rollout/segments.py`), so both read a malformed completion the same way. The rule, scanning left to right:

- an opening tag starts a block of its kind; the tags belong to the block they delimit;
- the matching closing tag ends it;
- an opening tag of *another* kind inside an unclosed block ends that block there (counted as unclosed) and
  starts its own; an unclosed block otherwise runs to the end of the text (counted as unclosed);
- a repeated opening tag of the same kind inside a block, and a closing tag with no open block of its kind,
  change nothing (a stray closing tag is counted);
- text outside every block is free text (reasoning).

>>> spans, m = block_spans("<perception>a</perception>so<answer>2")
>>> spans
[('perception', 0, 26), ('answer', 28, 37)]
>>> m["blocks/unclosed"], m["blocks/missing_answer"]
(1.0, 0.0)
"""

from __future__ import annotations

import re

KINDS = ("perception", "think", "answer")
MAX_CHARS = 20_000  # tags are searched in the first MAX_CHARS characters; the rest continues the last block
_TAG = re.compile(r"<(/?)(perception|think|answer)>")

Span = tuple[str, int, int]  # (kind, start, end): text[start:end], tags included


def block_spans(text: str) -> tuple[list[Span], dict[str, float]]:
    """The blocks of `text` in order, and counts: `blocks/unclosed`, `blocks/stray_close`,
    `blocks/missing_perception`, `blocks/missing_answer` (1 when no block of that kind), `blocks/n_<kind>`."""
    spans: list[Span] = []
    unclosed = stray = 0
    current, start = "", 0
    for m in _TAG.finditer(text[:MAX_CHARS]):
        closing, kind = m.group(1) == "/", m.group(2)
        if not closing:
            if current == kind:
                continue  # a repeated opening tag inside its own block
            if current:
                spans.append((current, start, m.start()))
                unclosed += 1
            current, start = kind, m.start()
        elif current == kind:
            spans.append((kind, start, m.end()))
            current = ""
        else:
            stray += 1
    if current:
        spans.append((current, start, len(text)))
        unclosed += 1
    metrics = {"blocks/unclosed": float(unclosed), "blocks/stray_close": float(stray)}
    for kind in KINDS:
        n = sum(1 for k, _, _ in spans if k == kind)
        metrics[f"blocks/n_{kind}"] = float(n)
    metrics["blocks/missing_perception"] = float(metrics["blocks/n_perception"] == 0)
    metrics["blocks/missing_answer"] = float(metrics["blocks/n_answer"] == 0)
    return spans, metrics


def block_contents(text: str, kind: str) -> list[str]:
    """The inner text of every `kind` block (tags stripped; an unclosed block up to where it ends).

    >>> block_contents("<perception>a</perception><think>t</think><perception>b", "perception")
    ['a', 'b']
    """
    out = []
    for k, s, e in block_spans(text)[0]:
        if k == kind:
            inner = text[s:e]
            inner = inner[len(f"<{kind}>") :]
            out.append(inner.removesuffix(f"</{kind}>"))
    return out


PV_TEMPLATE = (  # Perception Verification: the blindfolded reasoner's prompt (question + perception, no image)
    "{question}\n"
    "You cannot see the image. What was seen in it:\n{perception}\n"
    "Give your final answer in <answer></answer> tags.\n"
)


def extract_perception(text: str, tag: str = "perception") -> str:
    """All `<perception>…</perception>` blocks of `text`, stripped and joined by newlines.

    Blocks are read by `block_spans`, the same parser that labels perception tokens: a block ends
    at its closing tag, at an opening tag of another kind, or (unclosed) at the end of the text.

    >>> extract_perception("<perception>a red cube</perception><think>x</think><perception>2 balls")
    'a red cube\\n2 balls'
    >>> extract_perception("no perception here")
    ''
    """
    parts = (p.strip() for b in block_contents(text, tag) for p in b.split(f"<{tag}>"))  # a repeated opening tag
    return "\n".join(p for p in parts if p)


__all__ = ["KINDS", "PV_TEMPLATE", "block_contents", "block_spans", "extract_perception"]
