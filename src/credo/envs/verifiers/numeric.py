"""Numeric answers compared with a tolerance: "1,234", "10,\\!000", "-0.5", "1.5e-3", "3/4", "\\frac{3}{4}", "12%".

The answer text is the last `<answer>…</answer>` block, else the last `\\boxed{…}`, else the completion's last
`MAX_CHARS` characters; the number is the last one in it. Numbers are read exactly (as fractions), so long
integers compare exactly, and compared by `normalize.close`: integers exactly, others within a relative 1e-6, an
absolute tolerance only against a reference of exactly zero (an absolute 1e-6 would make 1e-7 and 2e-7 equal).
A percentage "12%" matches a reference of 12 or of 0.12 (two percentages compare as written).

What is not a number of its own: a thousands separator (`10,\\!000`, `1\\,000`, `1{,}000` are one number); an
exponent (`5 \\text{ m}^2` and `5 m^2` read 5, not 2); a number inside or multiplying a root, a function or π
(`2\\sqrt{3}`, `4*sqrt(2)`, `\\pi/2` hold no number: use the `math` verifier for expressions). A power of numbers
is evaluated (`2^{10}` = 1024, `10^{-7}`, `1.5 \\times 10^{3}`) and a mixed number is one (`2 2/3` = 8/3).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer
from credo.envs.verifiers.math import extract_boxed
from credo.envs.verifiers.normalize import (
    MIXED_NUMBER,
    REL_TOL,
    ZERO_TOL,
    close,
    mask_expressions,
    strip_thousands,
)

MAX_DIGITS = 400  # longer mantissas (and powers longer than this) are not numbers we compare
MAX_EXPONENT = 1000  # |exponent| bound: 1e999999999 would take forever as an exact fraction
_NOT_A_NUMBER = " \u2205 "  # what an over-long power is replaced by: it is no number, nor is its base

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d*)?|\d+\.\d*|\.\d+|\d+)"
_NUMBER = re.compile(
    rf"(?<![\w.])([-+\u2212]?)({_NUM})(?:[eE]([-+]?\d+))?(?:\s*/\s*([-+\u2212]?)\s*({_NUM}))?\s*(%?)"
)
_TIMES_TEN = re.compile(r"\s*(?:\\times|\\cdot|\*|x|×)\s*10\s*\^\s*\{?\s*([-+\u2212]?\d+)\s*\}?")
_POWER = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:\^|\*\*)\s*(?:\{\s*([-+\u2212]?\d{1,5})\s*\}|([-+\u2212]?\d{1,5}))"
)
_EXPONENT = re.compile(r"(?:\^|\*\*)\s*(?:\{[^{}]*\}|[-+\u2212]?\d+(?:\.\d+)?)")  # of a unit or a variable
_LATEX = [
    (re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\}\s*\{\s*([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)"), r"\1/\2"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[,!;: ]|\\\$|\$|\\left|\\right|\\(?:text|mathrm|mbox)\s*\{[^{}]*\}"), " "),
]


def _power(m: re.Match[str]) -> str:
    """A power of numbers as "p" or "p/q" (exact), or a non-number when it would exceed MAX_DIGITS."""
    base = Fraction(m.group(1))
    exp = int((m.group(2) or m.group(3)).replace("\u2212", "-"))
    if len(m.group(1)) > 50 or (base == 0 and exp < 0):
        return _NOT_A_NUMBER
    value = base**exp  # at most 50 digits to a power below 10**5: fast
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_DIGITS * 3.32:
        return _NOT_A_NUMBER
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _mixed(m: re.Match[str]) -> str:
    """A mixed number "2 2/3" as "8/3" (a proper fraction only: "2 4/3" stays two numbers)."""
    whole, num, den = (int(g) for g in m.groups())
    return f"{whole * den + num}/{den}" if 0 < num < den else m.group(0)


def _normalize(text: str) -> str:
    text = strip_thousands(text, plain_comma=False)  # plain commas are part of _NUM
    text = _TIMES_TEN.sub(r"e\1", text)
    text = _EXPONENT.sub(" ", _POWER.sub(_power, text))
    text = mask_expressions(MIXED_NUMBER.sub(_mixed, text))  # "2\sqrt{3}" holds no number of its own
    for pattern, repl in _LATEX:
        text = pattern.sub(repl, text)
    return mask_expressions(text.replace("(", " ").replace(")", " "))  # "\frac{\sqrt{2}}{2}" is masked now


def _number(digits: str) -> Fraction | None:
    digits = digits.replace(",", "")
    return Fraction(digits) if len(digits) <= MAX_DIGITS else None


def parse_numbers(text: str) -> list[list[Fraction]]:
    """Every number in `text`, each as its list of readings (a percentage has two: 12 and 0.12).

    >>> [[str(v) for v in r] for r in parse_numbers("-1,234.5 and 3/4 and 2.5e-1 and 50%")]
    [['-2469/2'], ['3/4'], ['1/4'], ['50', '1/2']]
    >>> parse_numbers(r"$\\frac{-3}{4}$"), parse_numbers(r"5 \\text{ m}^2"), parse_numbers("10,\\\\!000")
    ([[Fraction(-3, 4)]], [[Fraction(5, 1)]], [[Fraction(10000, 1)]])
    """
    out = []
    for m in _NUMBER.finditer(_normalize(text.rstrip()[-MAX_CHARS:])):
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


def _reference(reference: Any) -> list[Fraction] | None:
    """The reference's readings ([x], or [x, x/100] for "x%"), or None when it is not exactly one number."""
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int | Fraction):
        return [Fraction(reference)]
    if isinstance(reference, float):
        return [Fraction(repr(reference))] if math.isfinite(reference) else None  # 0.1 as written, not the double
    if not isinstance(reference, str):
        return None
    found = parse_numbers(reference)
    return found[0] if len(found) == 1 else None


def _matches(pred: list[Fraction], ref: list[Fraction], rel_tol: float, zero_tol: float) -> bool:
    if len(pred) == 2 and len(ref) == 2:  # two percentages: "1000%" is not "10%" because 1000/100 = 10
        return close(pred[0], ref[0], rel_tol, zero_tol)
    return any(close(p, r, rel_tol, zero_tol) for p in pred for r in ref)


def verify_numeric(completion: str, reference: Any, rel_tol: float = REL_TOL, zero_tol: float = ZERO_TOL) -> Score:
    """1.0 when the last number of the answer equals `reference` (module docstring); parts: correct, format.

    `reference` is a number or a string holding exactly one number ("1,234", "3/4", "12%"); any other reference
    (None, NaN, a bool, text with no or several numbers) is unscorable. `format` is 1 when the answer came from a
    non-empty `<answer>` tag or `\\boxed{}` and holds a number. Tolerances: `normalize.close`. Never raises.

    >>> verify_numeric("<answer>1,234.0</answer>", 1234).parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_numeric("<answer>1e-7</answer>", 2e-7).value  # relative tolerance: tiny values are not all equal
    0.0
    """
    try:
        answer = extract_answer(completion)
        if answer is None:
            answer = extract_boxed(completion)
        numbers = parse_numbers(completion if answer is None else answer)
        fmt = answer is not None and bool(numbers)
        ref = _reference(reference)
        correct = bool(numbers) and ref is not None and _matches(numbers[-1], ref, rel_tol, zero_tol)
        parts = {"correct": float(correct), "format": float(fmt)}
        if ref is None:
            return Score.unscorable(f"reference is not one number: {reference!r:.60}", parts)
        return Score(float(correct), parts, correct=correct)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"numeric verifier: {type(e).__name__}: {e}")


__all__ = ["parse_numbers", "verify_numeric"]
