"""Answer extraction from `<answer>…</answer>` tags and an exact integer check.

Cost is bounded without losing answers: the last tag is found by scanning from the end of the whole completion
(`str.rfind`, linear and in C), and only its content is capped, to its last `MAX_CHARS` characters. A completion
is never clipped to its tail before the search, so an answer followed by any amount of text is still found.
Text without a tag is stripped of trailing whitespace and clipped to its last `MAX_CHARS` characters before any
regex runs on it: an untagged answer must be near the end.
"""

from __future__ import annotations

import re
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.normalize import strip_thousands

MAX_CHARS = 10_000  # the most characters a verifier's regexes see: an answer's content, or an untagged tail
_OPEN, _CLOSE = "<answer>", "</answer>"
_INT = re.compile(r"[+-]?\d+")


def extract_answer(text: str) -> str | None:
    """Content of the last `<answer>…</answer>` block (stripped, at most its last `MAX_CHARS` characters), or None.

    >>> extract_answer("x <answer>1</answer> y <answer> 42 </answer>")
    '42'
    >>> extract_answer("<answer>42</answer>" + "more text. " * 2000)
    '42'
    >>> extract_answer("no tags") is None
    True
    """
    end = text.rfind(_CLOSE)
    start = text.rfind(_OPEN, 0, end) if end >= 0 else -1
    if start < 0:
        return None
    return text[max(start + len(_OPEN), end - MAX_CHARS) : end].strip()


def read_integer(text: str) -> int | None:
    """`text` as one integer: digits with an optional sign and thousands separators ("10,000", "1\\,000"), or None.

    >>> read_integer("−1,234"), read_integer("10,\\\\!000"), read_integer("4.0"), read_integer("")
    (-1234, 10000, None, None)
    """
    text = strip_thousands(text.strip().replace("\u2212", "-"))
    if len(text) > 4000 or not _INT.fullmatch(text):  # int() refuses more than 4300 digits
        return None
    return int(text)


def _reference_integer(reference: Any) -> int | None:
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int):
        return reference
    if isinstance(reference, float):
        return int(reference) if reference.is_integer() else None
    return read_integer(reference) if isinstance(reference, str) else None


def verify_integer(completion: str, reference: int) -> Score:
    """1.0 when the last answer tag holds exactly the reference integer; parts: correct, format.

    `format` is 1 when the tag holds one integer (thousands separators allowed). A reference that is not an
    integer (nor an integral float, nor a string of one) is unscorable. Never raises.

    >>> verify_integer("first 2+3=5\\n<answer>5</answer>", 5).value
    1.0
    >>> verify_integer("<answer>6</answer>", 5).parts
    {'correct': 0.0, 'format': 1.0}
    """
    try:
        ref = _reference_integer(reference)
        answer = extract_answer(completion)
        value = read_integer(answer) if answer is not None else None
        fmt = value is not None
        parts = {"correct": float(fmt and value == ref), "format": float(fmt)}
        if ref is None:
            return Score.unscorable(f"reference is not an integer: {reference!r:.60}", parts)
        return Score(parts["correct"], parts, correct=parts["correct"] == 1.0)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"integer verifier: {type(e).__name__}: {e}")


__all__ = ["MAX_CHARS", "extract_answer", "read_integer", "verify_integer"]
