"""Shared rules of the verifiers: how answer text is normalised and when two numbers are equal.

One place for what would otherwise be decided differently in each verifier:

- **Thousands separators** (`strip_thousands`): `10,000`, the MATH dataset's `10,\\!000`, `1\\,000`, `1{,}000`,
  `1~000` and thin spaces (U+2009, U+202F, U+00A0) between groups of three digits are one number.
- **Exponents of units** (`drop_unit_exponents`): the `2` of `5 \\text{ m}^2` or `5 m^2` is no number.
- **Spelling** (`normalize_math_text`): Unicode maths (`−`, `×`, `π`, `√`, `°`, `²`, …) as LaTeX, scientific
  notation `2.5e-3` as `2.5\\times 10^{-3}`, a mixed number `2 2/3` as `2\\frac{2}{3}` (= 8/3).
- **Tolerance** (`close`): integers compare exactly; otherwise two numbers are equal within a *relative*
  tolerance `REL_TOL = 1e-6` (|a - b| <= 1e-6 * max(|a|, |b|)); an absolute tolerance `ZERO_TOL = 1e-12` applies
  only when the reference is exactly zero. An absolute tolerance on every value would make all tiny values equal
  (1e-7 and 2e-7; math-verify's 6-decimal rounding makes 2^-98 and 2^-99 equal).
"""

from __future__ import annotations

import re
from fractions import Fraction

REL_TOL = 1e-6  # relative tolerance of every numeric comparison
ZERO_TOL = 1e-12  # absolute tolerance, used only against a reference that is exactly zero

# a separator between digit groups: LaTeX thin/negative spaces, a braced comma, a tie, Unicode thin spaces
_LATEX_SEP = r"(?:,\\!|\{,\}|\\[,!;: ]|~|[\u2009\u202f\u00a0])"
_LATEX_THOUSANDS = re.compile(rf"(?<=\d){_LATEX_SEP}(?=\d{{3}}(?!\d))")
_PLAIN_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00f7": "\\div ", "\u00b7": "\\cdot ", "\u03c0": "\\pi ",
    "\u221e": "\\infty ", "\u00b0": "^\\circ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ",
    "\u221a": "\\sqrt", "\u00b2": "^2", "\u00b3": "^3", "\u00bd": "\\frac{1}{2}",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?|\.\d+)[eE]([-+]?\d{1,4})(?![\w.])")
_UNIT_EXPONENT = re.compile(r"(?<=[A-Za-z}])\s*(?:\^|\*\*)\s*(?:\{\s*[-+\u2212]?\d+\s*\}|[-+\u2212]?\d+)")
MIXED_NUMBER = re.compile(r"(?<![\w.\\/^{])(\d+)[ \t]+(\d+)[ \t]*/[ \t]*(\d+)(?![\w.^/])")  # "2 2/3"
MASK = "\u2205"  # stands where an expression was masked: not a number, and no digit or word character
_FUNCTION = re.compile(
    r"\\(?:sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp|arcsin|arccos|arctan)\s*(?:\[[^\]]*\]\s*)?"
    r"(?:\{[^{}]*\}|\d+(?:\.\d+)?|[A-Za-z])"
    r"|(?<![A-Za-z])(?:sqrt|sin|cos|tan|log|ln|exp)\s*\([^()]*\)|\\pi(?![A-Za-z])|\u03c0|\u221a\s*\d+"
)
_OPERAND = re.compile(
    rf"(?<![\w.,])[-+\u2212]?\d+(?:[.,]\d+)*\s*(?:\*|\\cdot|\\times|\u00d7)?\s*{MASK}"
    rf"|{MASK}\s*(?:\*|/)\s*[-+\u2212]?\d+(?:[.,]\d+)*"
)


def strip_thousands(text: str, plain_comma: bool = True) -> str:
    """`text` with thousands separators between digit groups removed (plain commas too when `plain_comma`).

    A plain comma counts only between groups of exactly three digits ("1,234,567"); "1,23" or "3,4" stay.

    >>> strip_thousands(r"10,\\!000 and 1\\,000\\,000 and 1{,}500 and 12,345.5 but 1,23")
    '10000 and 1000000 and 1500 and 12345.5 but 1,23'
    >>> strip_thousands("(1,234)", plain_comma=False)
    '(1,234)'
    """
    text = _LATEX_THOUSANDS.sub("", text)
    if plain_comma:
        text = _PLAIN_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)
    return text


def drop_unit_exponents(text: str) -> str:
    """`text` without exponents of units or variables (after a letter or `}`), which are no answer of their own.

    >>> drop_unit_exponents(r"5 \\text{ m}^2 or 5 m^{2} or 3 cm**3, but 2^3 stays")
    '5 \\\\text{ m} or 5 m or 3 cm, but 2^3 stays'
    """
    return _UNIT_EXPONENT.sub("", text)


def mask_expressions(text: str) -> str:
    """Roots, functions and π, with the numbers multiplying or dividing them, replaced by `MASK`.

    What remains are numbers that stand alone: the `2` of `2\\sqrt{3}` or the `4` of `4*sqrt(2)` is a fragment
    of an expression, not an answer (the numeric and typed verifiers read plain numbers only).

    >>> mask_expressions(r"2\\sqrt{3}, 4*sqrt(2), \\pi/2, 2\\pi and 7")
    '\u2205, \u2205, \u2205, \u2205 and 7'
    """
    text = _FUNCTION.sub(MASK, text)
    while True:
        masked = _OPERAND.sub(MASK, text)
        if masked == text:
            return text
        text = masked


def _mixed(m: re.Match[str]) -> str:
    whole, num, den = m.groups()
    return f"{whole}\\frac{{{num}}}{{{den}}}" if 0 < int(num) < int(den) else m.group(0)


def normalize_math_text(text: str) -> str:
    """Unicode maths as LaTeX, LaTeX thousands separators dropped, scientific notation and mixed numbers as LaTeX.

    Plain commas are kept (math-verify reads "1,234" itself, and "(1,234)" may be an interval). A mixed number
    needs a proper fraction (numerator < denominator): "2 2/3" is 8/3, "2 4/3" is left alone.

    >>> normalize_math_text(r"1\\,000 or 2.5e-3 or 2 2/3 or 90° or −3")
    '1000 or 2.5\\\\times 10^{-3} or 2\\\\frac{2}{3} or 90^\\\\circ or -3'
    """
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], text)
    text = strip_thousands(text, plain_comma=False)
    text = _SCIENTIFIC.sub(r"\1\\times 10^{\2}", text)
    return MIXED_NUMBER.sub(_mixed, text)


def _decimal(x: float) -> Fraction:
    return Fraction(repr(x))  # 1e-6 is 1/10**6 exactly, not the binary double below it


def close(answer: Fraction, reference: Fraction, rel_tol: float = REL_TOL, zero_tol: float = ZERO_TOL) -> bool:
    """Whether `answer` equals `reference`: exactly for two integers, else within a relative `rel_tol`.

    Exact rational arithmetic, so the bound is sharp: 0.333333 equals 1/3 at rel_tol = 1e-6 (|diff| is exactly
    1e-6 * 1/3) and 0.33333 does not. Against a reference of exactly zero, |answer| <= `zero_tol`.

    >>> close(Fraction(1, 2**98), Fraction(1, 2**99)), close(Fraction(1234567), Fraction(1234568))
    (False, False)
    >>> close(Fraction("0.333333"), Fraction(1, 3)), close(Fraction("1e-7"), Fraction("2e-7"))
    (True, False)
    """
    if answer == reference:
        return True
    if answer.denominator == 1 and reference.denominator == 1:
        return False
    if reference == 0:
        return abs(answer) <= _decimal(zero_tol)
    return abs(answer - reference) <= _decimal(rel_tol) * max(abs(answer), abs(reference))


__all__ = ["MASK", "MIXED_NUMBER", "REL_TOL", "ZERO_TOL", "close", "drop_unit_exponents", "mask_expressions",
           "normalize_math_text", "strip_thousands"]
