"""Numeric answers compared with a tolerance: "1,234", "-0.5", "1.5e-3", "3/4", "\\frac{3}{4}", "12%".

The answer text is the last `<answer>…</answer>` block, else the last `\\boxed{…}`, else the whole completion;
the number is the last one in it. Numbers are read exactly (as fractions) before the tolerance test, so long
integers compare exactly. A percentage "12%" matches a reference of 12 or of 0.12.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer
from credo.envs.verifiers.math import extract_boxed

MAX_DIGITS = 400  # longer mantissas are not numbers we compare
MAX_EXPONENT = 1000  # |exponent| bound: 1e999999999 would take forever as an exact fraction

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d*)?|\d+\.\d*|\.\d+|\d+)"
_NUMBER = re.compile(
    rf"(?<![\w.])([-+\u2212]?)({_NUM})(?:[eE]([-+]?\d+))?(?:\s*/\s*([-+\u2212]?)\s*({_NUM}))?\s*(%?)"
)
_LATEX = [
    (re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\}\s*\{\s*([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)"), r"\1/\2"),
    (re.compile(r"\s*(?:\\times|\\cdot|\*|x|×)\s*10\s*\^\s*\{?\s*([-+\u2212]?\d+)\s*\}?"), r"e\1"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[,!;: ]|\\\$|\$|\\left|\\right|\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}"), " "),
]


def _normalize(text: str) -> str:
    for pattern, repl in _LATEX:
        text = pattern.sub(repl, text)
    return text.replace("(", " ").replace(")", " ")


def _number(digits: str) -> Fraction | None:
    digits = digits.replace(",", "")
    return Fraction(digits) if len(digits) <= MAX_DIGITS else None


def parse_numbers(text: str) -> list[list[Fraction]]:
    """Every number in `text`, each as its list of readings (a percentage has two: 12 and 0.12).

    >>> [[str(v) for v in r] for r in parse_numbers("-1,234.5 and 3/4 and 2.5e-1 and 50%")]
    [['-2469/2'], ['3/4'], ['1/4'], ['50', '1/2']]
    >>> parse_numbers(r"$\\frac{-3}{4}$")
    [[Fraction(-3, 4)]]
    """
    out = []
    for m in _NUMBER.finditer(_normalize(text[-MAX_CHARS:])):
        sign, mant, exp, den_sign, den, pct = m.groups()
        value = _number(mant)
        if value is None or (exp is not None and abs(int(exp)) > MAX_EXPONENT):
            continue
        if exp is not None:
            value *= Fraction(10) ** int(exp)
        if den is not None:
            d = _number(den)
            if not d:
                continue
            value = value / d * (-1 if den_sign in ("-", "\u2212") else 1)
        value = -value if sign in ("-", "\u2212") else value
        out.append([value, value / 100] if pct else [value])
    return out


def _reference(reference: Any) -> Fraction | None:
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int | Fraction):
        return Fraction(reference)
    if isinstance(reference, float):
        return Fraction(reference) if math.isfinite(reference) else None
    found = parse_numbers(str(reference))
    return found[-1][0] if len(found) == 1 else None


def _close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    except OverflowError:
        return False


def verify_numeric(completion: str, reference: Any, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> Score:
    """1.0 when the last number of the answer is within tolerance of `reference`; parts: correct, format.

    `reference` is a number or a string holding exactly one number ("1,234", "3/4", "12%" = 12). `format` is 1
    when the answer came from a non-empty `<answer>` tag or `\\boxed{}` and holds a number. Never raises.

    >>> verify_numeric("<answer>1,234.0</answer>", 1234).parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_numeric("so x = 0.33", "1/3").value  # 1% off: outside rel_tol = 1e-4
    0.0
    """
    fmt = correct = False
    try:
        answer = extract_answer(completion)
        if answer is None:
            answer = extract_boxed(completion)
        tagged = answer is not None
        numbers = parse_numbers(completion if answer is None else answer)
        fmt = tagged and bool(numbers)
        ref = _reference(reference)
        correct = bool(numbers) and ref is not None and any(_close(v, ref, rel_tol, abs_tol) for v in numbers[-1])
    except Exception:  # total: a verifier never raises
        correct = False
    return Score(float(correct), {"correct": float(correct), "format": float(fmt)})


__all__ = ["parse_numbers", "verify_numeric"]
