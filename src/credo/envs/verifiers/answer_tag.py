"""Answer extraction from `<answer>…</answer>` tags and an exact integer check."""

from __future__ import annotations

import re

from credo.envs.base import Score

MAX_CHARS = 10_000  # clip very long completions before running regexes
_INT = re.compile(r"[+-]?\d+")


def extract_answer(text: str) -> str | None:
    """Content of the last `<answer>…</answer>` block, or None.

    >>> extract_answer("x <answer>1</answer> y <answer> 42 </answer>")
    '42'
    >>> extract_answer("no tags") is None
    True
    """
    text = text[-MAX_CHARS:]
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end].strip() if start >= 0 else None


def verify_integer(completion: str, reference: int) -> Score:
    """1.0 when the last answer tag holds exactly the reference integer; parts: correct, format.

    >>> verify_integer("first 2+3=5\\n<answer>5</answer>", 5).value
    1.0
    >>> verify_integer("<answer>6</answer>", 5).parts
    {'correct': 0.0, 'format': 1.0}
    """
    try:
        ans = extract_answer(completion)
        fmt = ans is not None and _INT.fullmatch(ans) is not None
        correct = fmt and int(ans) == int(reference)
    except Exception:  # total: a verifier never raises
        fmt = correct = False
    return Score(float(correct), {"correct": float(correct), "format": float(fmt)})
