"""Lists of numbers compared element by element: "[-83, -41, 5]", "['-83.0', '-41.0', '5.0']", "-83, -41, 5".

For list-valued tasks (reasoning-gym's number_sorting, …) whose policy may not write the answer tag yet: the
answer text is the last `<answer>…</answer>` block, else the last `[…]` in the completion's last `MAX_CHARS`
characters (format-free, as `numeric` reads the last number). Inside it, the last `[…]` if there is one, else the
whole text, split on commas; every element (quotes and spaces stripped) must be exactly one number, read by
`numeric.parse_numbers` and compared by `normalize.close` (integers exactly, others within a relative 1e-6).
Correct iff the lists have the same length and every position matches: for sorting, order and values both count.
Commas always separate elements here, so "[1,234]" is two numbers, not 1234. Stricter than reasoning-gym's own
number_sorting scorer, which accepts any value within 1 of the reference (65.5 for 65): on integer lists the two
agree (tests/test_number_list_verifier.py).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer
from credo.envs.verifiers.normalize import close
from credo.envs.verifiers.numeric import parse_numbers

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def parse_number_list(text: str) -> list[Fraction] | None:
    """The numbers of the last `[…]` in `text` (else of `text`), one per comma-separated element, or None when an
    element is not exactly one number (or there is none).

    >>> [str(x) for x in parse_number_list("so: ['-83.0', '-41.0', '5']")]
    ['-83', '-41', '5']
    >>> parse_number_list("[1, two]") is None, parse_number_list("[]") is None, len(parse_number_list("1,234"))
    (True, True, 2)
    """
    found = _BRACKETS.findall(text)
    body = found[-1] if found else text
    out = []
    for element in body.split(","):
        numbers = parse_numbers(element.strip().strip("'\""))
        if len(numbers) != 1 or len(numbers[0]) != 1:  # not one number, or a percentage (two readings)
            return None
        out.append(numbers[0][0])
    return out or None


def verify_number_list(completion: str, reference: Any) -> Score:
    """1.0 when the answer's list of numbers equals `reference` position by position (module docstring).

    `reference`: a list of numbers or numeric strings, a string holding one ("['-83.0', '5.0']"), or one number
    (a list of one); any other reference (None, a bool, NaN, an element that is not one number) is unscorable.
    Parts: `correct`, and `format` = 1 when the list came from a non-empty answer tag.
    Never raises.

    >>> verify_number_list("Sorted: [-83, -41, 5]", "['-83.0', '-41.0', '5.0']").value
    1.0
    >>> verify_number_list("<answer>[5, -41, -83]</answer>", [-83, -41, 5]).parts
    {'correct': 0.0, 'format': 1.0}
    """
    try:
        if isinstance(reference, list | tuple):
            reference = ", ".join(str(x) for x in reference)
        elif isinstance(reference, int | float) and not isinstance(reference, bool):
            reference = str(reference)  # a one-element list
        ref = parse_number_list(reference) if isinstance(reference, str) else None
        tagged = extract_answer(completion)
        if tagged is not None:
            answer = parse_number_list(tagged)
        else:
            found = _BRACKETS.findall(completion.rstrip()[-MAX_CHARS:])
            answer = parse_number_list(f"[{found[-1]}]") if found else None
        correct = (answer is not None and ref is not None and len(answer) == len(ref)
                   and all(close(a, r) for a, r in zip(answer, ref, strict=True)))
        parts = {"correct": float(correct), "format": float(tagged is not None and answer is not None)}
        if ref is None:
            return Score.unscorable(f"reference is not a list of numbers: {reference!r:.60}", parts)
        return Score(float(correct), parts, correct=correct)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"number_list verifier: {type(e).__name__}: {e}")


__all__ = ["parse_number_list", "verify_number_list"]
