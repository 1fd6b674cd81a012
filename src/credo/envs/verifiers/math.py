"""Math answers checked with HuggingFace `math_verify`: fractions, LaTeX, sets, intervals, symbolic equality.

**Where the answer is.** The last `<answer>…</answer>` block if there is one (a `\\boxed{…}` inside it wins), else
the last `\\boxed{…}`, else the whole completion's last `MAX_CHARS` characters (`answer_tag` explains the bounds).
A tag or box content longer than `MAX_ANSWER_CHARS` is no final answer: its tail is read like untagged text,
without format credit.

**One reading per text** (`read`). A tagged or boxed answer and a bare reference (a dataset's answer column) are
read whole, as LaTeX inside `\\boxed{}`, after the normalisations of `normalize.normalize_math_text` (thousands
separators, scientific notation, mixed numbers, Unicode) and after dropping leading and trailing words ("The answer
is", "5 apples", "cm."). A text with `$…$`, `\\(…\\)` or `\\[…\\]` and an untagged completion are read by
math_verify's free-text extraction. Only when the LaTeX reading fails is plain arithmetic ("1/(2**98)") read as an
expression. Reading every text both as LaTeX and as free text and accepting any pair let math_verify's free-text
reading keep a number fragment (`2` of `2\\sqrt{3}`, `4` of `4*sqrt(2)`, the `10` of `a+b=10`, the `2` of `2 2/3`).

**Numbers** (also inside sets, tuples and intervals) compare by `normalize.close`: integers exactly, others within
a relative 1e-6, an absolute 1e-12 only against an exact zero; a percentage "10\\%" equals 10 and 0.1. math_verify's
own numeric test (rounding to 6 decimals, `evalf(chop=True)`) would make all tiny values equal. Everything else
(equations, symbolic expressions, matrices) is math_verify's `verify`; its 6-decimal rounding still applies to the
entries of a matrix (a known limit: `[[1e-7]]` equals `[[2e-7]]`). An equation answers a number only as an
assignment (`x = 2` for 2, not `a+b = 10` for 10) or as a worked computation of plain arithmetic, read as its last
side (`3+7 = 10` for 10, as the untagged reply's free-text reading takes it: else the tags would cost the reward).

math_verify's own timeouts use `signal.alarm`, which works only on the main thread; they are switched off here
(`parsing_timeout=None`, `timeout_seconds=None`) and credo enforces a wall-clock limit per item instead, in
`credo.envs.runner.VerifyRunner`. A pathological answer such as `9^{9^{9}}` can make sympy run for minutes: run
this verifier through a runner with `workers >= 1` (the default) so such an item is cut off.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import math_verify.grader
import math_verify.parser
import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer
from credo.envs.verifiers.normalize import REL_TOL, ZERO_TOL, close, normalize_math_text

# imported with the module, so that a verification worker pays for sympy while it starts, not on its first item
math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # credo enforces the timeouts (module docstring): no warning
math_verify.grader.TIMEOUT_WARNING_SHOWN = True
_LATEX = [LatexExtractionConfig()]
_FREE_TEXT = [LatexExtractionConfig(), ExprExtractionConfig()]
_EXPR = [ExprExtractionConfig()]

MATH_NAMES = frozenset({"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh",
                        "cosh", "tanh", "log", "ln", "lg", "exp", "pi", "infty", "inf", "oo", "mod", "gcd", "lcm",
                        "max", "min", "det"})
MAX_ANSWER_CHARS = 1_000  # a longer tag or box content is no final answer: read like untagged text, no format
MAX_EXACT_EXPONENT = 10_000  # larger integer powers are compared in floating point (40 digits), not exactly
_DELIMITERS = re.compile(r"(?<!\\)\$|\\\(|\\\[")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*[A-Za-z]")
_PUNCT = ".,;:!?\"'()"
_ARITHMETIC = re.compile(r"[\d\s.+\-*/^()]+")
_AND = re.compile(r"\s+and\s+")
# a bare unit with an exponent after a number ("5 m^2"); `\\text{ m}^2` math_verify drops itself
_UNIT_POWER = re.compile(r"(?<=\d)(?:\s|\\[,;: ])*(?:mm|cm|km|m|ft|in|s|kg|g)\s*\^\s*\{?\s*-?\d\s*\}?\s*$")


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`) with balanced braces within `MAX_CHARS`, or None.

    >>> extract_boxed(r"so \\boxed{1} and finally \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_boxed(r"\\boxed{unclosed") is None
    True
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, min(len(text), i + MAX_CHARS)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_math_answer(completion: str) -> tuple[str, bool]:
    """(answer text, whether it came from an answer tag or a box); the whole (clipped) text otherwise.

    >>> extract_math_answer("so <answer>\\\\boxed{3}</answer>")
    ('3', True)
    >>> extract_math_answer("it is 4")
    ('it is 4', False)
    """
    tagged = extract_answer(completion)
    if tagged is not None:
        return extract_boxed(tagged) or tagged, True
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed, True
    return completion.rstrip()[-MAX_CHARS:], False


def _is_word(token: str) -> bool:
    token = token.strip(_PUNCT)
    return _WORD.fullmatch(token) is not None and token.lower() not in MATH_NAMES


def _is_pronoun(tokens: list[str]) -> bool:
    """A leading single letter before a word: a pronoun or an article ("I think", "a total of"), or "x is 5"."""
    return len(tokens) > 1 and len(tokens[0]) == 1 and tokens[0].isalpha() and _is_word(tokens[1])


def strip_words(text: str) -> str:
    """`text` without leading and trailing words (2+ letters, not a function name) and final punctuation.

    Words in the middle stay: "5 or 6" is then read as LaTeX, and a hedge matches nothing.

    >>> strip_words("The answer is 2\\\\sqrt{3} cm."), strip_words("so x = 5 apples"), strip_words("sin x")
    ('2\\\\sqrt{3}', 'x = 5', 'sin x')
    """
    tokens = text.split()
    while tokens and (_is_word(tokens[0]) or _is_pronoun(tokens)):
        tokens.pop(0)
    while tokens and _is_word(tokens[-1]):
        tokens.pop()
    return " ".join(tokens).rstrip(".,;:!? ")


def _first_expr(found: list[Any]) -> Any:
    return next((x for x in found if not isinstance(x, str)), None)


def read(text: str, free_text: bool = False) -> tuple[Any, str]:
    """(the sympy reading of `text` or None, the normalised text); one reading, as the module docstring says.

    `free_text`: read with math_verify's extraction for whole completions (an untagged completion).

    >>> read("2\\\\sqrt{3}")[0], read("The answer is 4*sqrt(2)")[0], read("10,\\\\!000")[0]
    (2*sqrt(3), 4*sqrt(2), 10000)
    """
    text = normalize_math_text(text.replace("\\$", ""))
    if free_text or _DELIMITERS.search(text):
        return _first_expr(parse(text, _FREE_TEXT, parsing_timeout=None)), text.strip()
    core = strip_words(text)
    if not core:  # words only ("no solution"): not maths, compared as a string
        return None, " ".join(text.split())
    core = _AND.sub(", ", _UNIT_POWER.sub("", core))
    sides = core.split("=")
    if len(sides) > 1 and all(s.strip() and _ARITHMETIC.fullmatch(s) for s in sides):
        core = sides[-1].strip()  # a worked computation "3+7 = 10" answers its result, as free text reads it
    expr = _first_expr(parse(f"\\boxed{{{core}}}", _LATEX, parsing_timeout=None))
    if expr is None and _ARITHMETIC.fullmatch(core):
        expr = _first_expr(parse(core.replace("^", "**"), _EXPR, parsing_timeout=None))
    return expr, core


def _reference(ref: Any) -> tuple[Any, str] | None:
    """The reading of one reference, or None when it cannot be read (unscorable)."""
    if isinstance(ref, bool) or ref is None:
        return None
    if isinstance(ref, int):
        return sympy.Integer(ref), str(ref)
    if isinstance(ref, float):
        return (sympy.Rational(repr(ref)), repr(ref)) if math.isfinite(ref) else None
    if isinstance(ref, Fraction):
        return sympy.Rational(ref.numerator, ref.denominator), str(ref)
    text = str(ref).strip()
    text = extract_boxed(text) or text
    expr, core = read(text)
    if expr is None and (not core or re.search(r"[\d\\^_{}=+*/]", core)):
        return None  # maths that does not parse; a plain word ("Paris") is compared as a string
    return expr, core


def _is_number(e: Any) -> bool:
    return isinstance(e, sympy.Expr) and bool(e.is_number)


def _exact(e: sympy.Expr) -> Fraction | None:
    """`e` as an exact rational (decimals as written), or None (irrational, or powers too large to expand)."""
    for p in e.atoms(sympy.Pow):
        if p.exp.is_number and abs(sympy.N(p.exp, 15)) > MAX_EXACT_EXPONENT:
            return None
    e = e.xreplace({f: sympy.Rational(str(f)) for f in e.atoms(sympy.Float)}).doit()
    return Fraction(int(e.p), int(e.q)) if e.is_Rational else None


def _num_eq(answer: sympy.Expr, reference: sympy.Expr) -> bool | None:
    """`normalize.close` on two sympy numbers: exactly when both are rational, else on 40-digit values."""
    a, r = _exact(answer), _exact(reference)
    if a is not None and r is not None:
        return close(a, r)
    a, r = sympy.N(answer, 40), sympy.N(reference, 40)
    if not (a.is_real and r.is_real and a.is_finite and r.is_finite):
        return None  # complex or infinite: math_verify decides
    if r == 0:
        return bool(abs(a) <= ZERO_TOL)
    return bool(abs(a - r) <= REL_TOL * max(abs(a), abs(r)))


def _numbers_eq(gold: sympy.Expr, pred: sympy.Expr) -> bool | None:
    """Numbers, with a percentage "X%" equal to X and to X/100 (but two percentages compare as X)."""
    g_pct, p_pct = math_verify.grader.get_pct_val(gold), math_verify.grader.get_pct_val(pred)
    if g_pct is not None and p_pct is not None:
        return _num_eq(p_pct, g_pct)
    if g_pct is not None:
        return _num_eq(pred, g_pct) or _num_eq(pred, g_pct / 100)
    if p_pct is not None:
        return _num_eq(p_pct, gold) or _num_eq(p_pct / 100, gold)
    return _num_eq(pred, gold)


def _elements_eq(gold: list[Any], pred: list[Any], ordered: bool) -> bool | None:
    if len(gold) != len(pred) or not all(map(_is_number, gold + pred)):
        return None
    if not ordered:
        gold, pred = sorted(gold, key=lambda x: sympy.N(x, 40)), sorted(pred, key=lambda x: sympy.N(x, 40))
    verdicts = [_numbers_eq(g, p) for g, p in zip(gold, pred, strict=True)]
    return None if None in verdicts else all(verdicts)


def _numeric_verdict(gold: Any, pred: Any) -> bool | None:
    """credo's verdict where numbers decide (module docstring), None where math_verify's `verify` decides."""
    if isinstance(gold, sympy.Eq) and isinstance(gold.lhs, sympy.Symbol) and _is_number(pred):
        gold = gold.rhs  # "x = 5" as a reference: 5 answers it
    if isinstance(pred, sympy.Eq) and isinstance(pred.lhs, sympy.Symbol) and _is_number(gold):
        pred = pred.rhs
    if _is_number(gold) and _is_number(pred):
        return _numbers_eq(gold, pred)
    if _is_number(gold) and isinstance(pred, sympy.core.relational.Relational | sympy.And):
        return False  # "a+b=10" does not answer 10
    if isinstance(gold, sympy.FiniteSet) and isinstance(pred, sympy.FiniteSet):
        return _elements_eq(list(gold.args), list(pred.args), ordered=False)
    if isinstance(gold, sympy.Tuple) and isinstance(pred, sympy.Tuple):
        return _elements_eq(list(gold.args), list(pred.args), ordered=True)
    if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
        if (gold.left_open, gold.right_open) != (pred.left_open, pred.right_open):
            return False
        ends = [(g, p) for g, p in ((gold.start, pred.start), (gold.end, pred.end)) if g != p]
        if any(not (g.is_finite and p.is_finite) for g, p in ends):
            return False
        return _elements_eq([g for g, _ in ends], [p for _, p in ends], ordered=True) if ends else True
    return None


def _format_ok(gold: tuple[Any, str], pred: tuple[Any, str]) -> bool:
    """Whether the answer reads as the reference's type: a number for a number (`x = 5` too), a word for a word."""
    (g, _), (p, p_text) = gold, pred
    if g is None:
        return p is None and bool(p_text)
    if isinstance(p, sympy.Eq) and isinstance(p.lhs, sympy.Symbol):
        p = p.rhs
    return p is not None and (_is_number(p) or not _is_number(g))


def equivalent(gold: tuple[Any, str], pred: tuple[Any, str]) -> bool:
    """Whether two readings (`read`) are the same answer; two unparsed texts compare as case-folded strings."""
    (g, g_text), (p, p_text) = gold, pred
    if g is None or p is None:
        return g is None and p is None and bool(g_text) and g_text.casefold() == p_text.casefold()
    try:
        verdict = _numeric_verdict(g, p)
    except Exception:  # sympy on an odd expression: math_verify decides
        verdict = None
    return verdict if verdict is not None else verify([g], [p], timeout_seconds=None)


def verify_math(completion: str, reference: Any) -> Score:
    """1.0 when the answer equals `reference` mathematically (module docstring); parts: correct, format.

    `reference`: a string (LaTeX or plain, optionally boxed), a number, or a list of acceptable answers; one that
    cannot be read (None, NaN, maths that does not parse) is unscorable. `format` is 1 when the answer came from
    an `<answer>` tag or `\\boxed{}` and reads as maths (or as a word, against a word reference). Never raises.

    >>> verify_math("so <answer>\\\\frac{1}{2}</answer>", "0.5").parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_math("<answer>2</answer>", "2\\\\sqrt{3}").value
    0.0
    """
    try:
        refs = reference if isinstance(reference, list | tuple) else [reference]
        golds = [_reference(r) for r in refs]
        answer, tagged = extract_math_answer(completion)
        if tagged and len(answer) > MAX_ANSWER_CHARS:  # parsing it whole as LaTeX could take seconds
            answer, tagged = answer[-MAX_ANSWER_CHARS:], False
        pred = read(answer, free_text=not tagged)
        fmt = tagged and any(g is not None and _format_ok(g, pred) for g in golds)
        correct = any(g is not None and equivalent(g, pred) for g in golds)
        parts = {"correct": float(correct), "format": float(fmt)}
        if all(g is None for g in golds):
            return Score.unscorable(f"reference cannot be read as maths: {reference!r:.80}", parts)
        return Score(float(correct), parts, correct=correct)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"math verifier: {type(e).__name__}: {e}")


def verify_math_tagged(completion: str, reference: Any) -> Score:
    """`verify_math` with the format required: correct only when the answer came from an `<answer>` tag or a
    `\\boxed{}` (its `format` part is 1). `verify_math` reads an untagged completion as free text, so a reply that
    restates the problem ("Evaluate 7*7+7 …") is read as the value of that expression; this is the format-required
    accuracy for an `eval.extra_verifiers` entry. Unscorable when `verify_math` is. Never raises.

    >>> verify_math("7*7+7", "56").value, verify_math_tagged("7*7+7", "56").value
    (1.0, 0.0)
    >>> verify_math_tagged("<answer>So it is \\\\boxed{56}.</answer>", "56").value
    1.0
    """
    s = verify_math(completion, reference)
    if not s.scorable or s.parts.get("format", 0.0) == 1.0:
        return s
    return Score(0.0, {**s.parts, "correct": 0.0}, correct=False)


__all__ = ["MATH_NAMES", "equivalent", "extract_boxed", "extract_math_answer", "read", "strip_words", "verify_math",
           "verify_math_tagged"]
