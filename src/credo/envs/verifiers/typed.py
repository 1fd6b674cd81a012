"""Structured Verbal Verification (MoCA, arXiv 2605.14054, §4.3 of the methods reference) as code.

MoCA's outcome reward R_O has an LLM judge execute a fixed algorithm instead of a holistic "equivalent?":
(1) identify the answer type, (2) extract the prediction, (3) reconstruct the reference in the same form,
(4) compare by type. Here the four steps are rules, so the verdict is exact, fast and total:

1. **Type** from the reference: a bool → yes/no; a number → number; a set, frozenset, list or tuple → set;
   a string → yes/no when it is a yes/no word, number when it reads as one number ("3", "-2.5", "3/4",
   "three"), choice when it is one letter A–J ("C", "(c)", "C."), set when it holds `,` `;` or ` and ` or is
   "none"/"empty", else word.
2. **Prediction**: the content of the last `<answer>…</answer>` block (none: wrong, format 0).
3. **Reference** normalised to the same form.
4. **Compare** by type:
   - number: every number in the prediction (digits, "1,234", fractions, decimals, number words up to
     ninety-nine, "minus two", "none" = 0) must have the same value, equal to the reference exactly or within a
     relative 1e-6 ("3 (three)" counts, "2 or 3" does not: a hedge is wrong);
   - yes/no: yes/true/correct/y vs no/false/incorrect/n, with "not" flipping the next word; exactly one
     polarity may occur ("yes, no" is wrong);
   - set: split on `,` `;` `/` `&` and the word "and"; brackets, quotes and articles dropped; order and
     repeats ignored; elements compared as numbers when both read as numbers, else as words; "none", "empty",
     "nothing", "{}" = the empty set;
   - word: case, surrounding punctuation, articles, a leading "the answer is" and plural -s/-es are ignored;
   - choice: the chosen letter as the `mcq` verifier reads it (`choice.py`).

`format` is 1 when an `<answer>` block exists and its content reads as the reference's type. Departure from
the paper: no LLM, so no free-text paraphrase or expression equivalence (use the `math` verifier for those).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import extract_answer
from credo.envs.verifiers.choice import verify_choice
from credo.envs.verifiers.normalize import close, drop_unit_exponents, mask_expressions, strip_thousands

MAX_ANSWER_CHARS = 1_000  # longer answer contents are clipped before the regexes

TYPES = ("number", "yesno", "set", "choice", "word")
YES = {"yes", "true", "correct", "y"}  # not "right"/"wrong": spatial answers say "to the right"
NO = {"no", "false", "incorrect", "n"}
EMPTY = {"none", "empty", "nothing", "{}", "[]", "()", "∅", "empty set", "no objects", "nothing at all"}
ARTICLES = {"a", "an", "the"}

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(_UNITS)} | {"none": 0}
for _t, _w in enumerate(_TENS):
    if _w:
        NUMBER_WORDS[_w] = 10 * _t
        for _u in range(1, 10):
            NUMBER_WORDS[f"{_w}-{_UNITS[_u]}"] = NUMBER_WORDS[f"{_w} {_UNITS[_u]}"] = 10 * _t + _u

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUM = re.compile(
    rf"(?<![\w.])([-+\u2212]|(?:minus|negative)\s+)?\s*({_DIGITS})(?:\s*/\s*({_DIGITS}))?(?![\w])"
)
_WORD_NUM = re.compile(
    r"\b(?:(minus|negative)\s+)?(" + "|".join(sorted(map(re.escape, NUMBER_WORDS), key=len, reverse=True)) + r")\b"
)
_CHOICE_REF = re.compile(r"\s*[(\[]?\s*([A-Ja-j])\s*[)\]]?\.?\s*")
_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.I)
_SET_SPLIT = re.compile(r"\s*(?:[,;/&]|\band\b)\s*")
_STRIP = " \t\n.!?:\"'`*{}[]()"


def _fraction(digits: str) -> Fraction:
    return Fraction(digits.replace(",", ""))


def numbers_in(text: str) -> list[Fraction]:
    """Every number in `text`: digits (with thousands commas, decimals, a fraction a/b) and number words.

    >>> [str(v) for v in numbers_in("-1,234 and 3/4, twenty-one or minus two")]
    ['-1234', '3/4', '21', '-2']
    """
    text = strip_thousands(text[:MAX_ANSWER_CHARS], plain_comma=False)
    text = mask_expressions(drop_unit_exponents(text)).lower()  # no unit exponents, no fragments of expressions
    found: list[tuple[int, Fraction]] = []
    for m in _NUM.finditer(text):
        sign, num, den = m.groups()
        value = _fraction(num)
        if den is not None:
            d = _fraction(den)
            if d == 0:
                continue
            value /= d
        negative = sign is not None and sign.strip() in ("-", "\u2212", "minus", "negative")
        found.append((m.start(), -value if negative else value))
    for m in _WORD_NUM.finditer(text):
        value = Fraction(NUMBER_WORDS[m.group(2)])
        found.append((m.start(), -value if m.group(1) else value))
    return [v for _, v in sorted(found, key=lambda p: p[0])]


def _as_number(x: Any) -> Fraction | None:
    """`x` as one exact number, or None (bools are not numbers here)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int | Fraction):
        return Fraction(x)
    if isinstance(x, float):
        return Fraction(repr(x)) if math.isfinite(x) else None  # repr: 0.1 is 1/10, not the binary double
    if isinstance(x, str):
        s = _PREFIX.sub("", x.strip()).strip(_STRIP).lower()
        if not s or len(s) > 40:
            return None
        m = _NUM.fullmatch(s)
        if m or s in NUMBER_WORDS or _WORD_NUM.fullmatch(s):
            vals = numbers_in(s)
            return vals[0] if len(vals) == 1 else None
    return None


def _polarity(text: str) -> bool | None:
    """True for yes, False for no, None when neither or both occur.

    >>> _polarity("Yes."), _polarity("not true"), _polarity("yes, no"), _polarity("maybe")
    (True, False, None, None)
    """
    words = re.findall(r"[a-z]+", text[:MAX_ANSWER_CHARS].lower())
    seen: set[bool] = set()
    negate = False
    for w in words:
        if w == "not":
            negate = True
            continue
        if w in YES or w in NO:
            seen.add((w in YES) != negate)
        negate = False
    return seen.pop() if len(seen) == 1 else None


def _singular(word: str) -> str:
    if len(word) > 3 and re.search(r"(?:s|x|ch|sh)es$", word):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def normalize_word(text: str) -> str:
    """Lower case, no surrounding punctuation or articles, plural -s dropped, single spaces.

    >>> normalize_word("  The Blue Circles. ")
    'blue circle'
    """
    s = _PREFIX.sub("", str(text)[:MAX_ANSWER_CHARS].strip()).strip(_STRIP).lower()
    words = [w.strip(_STRIP) for w in s.split()]
    words = [_singular(w) for w in words if w and w not in ARTICLES]
    return " ".join(words)


def _element(x: Any) -> str:
    """A set element's comparison key: a number's exact value, else its normalised word."""
    n = _as_number(x)
    return f"#{n}" if n is not None else normalize_word(str(x))


def as_set(x: Any) -> frozenset[str] | None:
    """A set answer as element keys, or None when it is not readable as a set.

    >>> sorted(as_set("{Red, blue and green}")), as_set("none"), sorted(as_set([3, "2"]))
    (['blue', 'green', 'red'], frozenset(), ['#2', '#3'])
    """
    if isinstance(x, set | frozenset | list | tuple):
        return frozenset(_element(e) for e in x)
    if not isinstance(x, str):
        return None
    raw = _PREFIX.sub("", x[:MAX_ANSWER_CHARS].strip()).strip()
    s = raw.strip(_STRIP)
    if raw.lower() in EMPTY or s.lower() in EMPTY:
        return frozenset()
    if not s:
        return None
    parts = [p.strip(_STRIP) for p in _SET_SPLIT.split(s)]
    keys = frozenset(_element(p) for p in parts if p)
    return None if "" in keys or not keys else keys


def answer_type(reference: Any) -> str:
    """The answer type a reference implies (step 1).

    >>> [answer_type(r) for r in (3, True, "no", "3/4", "(B)", "red, blue", frozenset(), "blue")]
    ['number', 'yesno', 'yesno', 'number', 'choice', 'set', 'set', 'word']
    """
    if isinstance(reference, bool):
        return "yesno"
    if isinstance(reference, int | float | Fraction):
        return "number"
    if isinstance(reference, set | frozenset | list | tuple):
        return "set"
    s = str(reference).strip()
    if s.lower().strip(_STRIP) in YES | NO:
        return "yesno"
    if s.lower() in EMPTY or s.lower().strip(_STRIP) in EMPTY:
        return "set"
    if _as_number(s) is not None:
        return "number"
    if _CHOICE_REF.fullmatch(s):
        return "choice"
    if _SET_SPLIT.search(s):
        return "set"
    return "word"


def _prediction_type(answer: str) -> str:
    """The type an answer content reads as, without a reference: yes/no, one number, a set, else a word."""
    if _polarity(answer) is not None:
        return "yesno"
    if answer.strip().strip(_STRIP).lower() in EMPTY:
        return "set"  # "none" as an answer is the empty set ("0" is how a count is written)
    if len(set(numbers_in(answer))) == 1:
        return "number"
    if _CHOICE_REF.fullmatch(answer):
        return "choice"
    return "set" if _SET_SPLIT.search(answer) else "word"


def typed_key(answer: str | None, kind: str | None = None) -> str | None:
    """A canonical string for an answer's content (for majority votes): "3", "yes", "blue,red", "blue", "C".

    The type is `kind`, or read off the answer itself. None when the content does not read as that type.

    >>> typed_key("Three"), typed_key("3 (three)"), typed_key("Yes."), typed_key("red and Blue"), typed_key("(c)")
    ('3', '3', 'yes', 'blue,red', 'C')
    """
    try:
        if answer is None:
            return None
        answer = answer[:MAX_ANSWER_CHARS]
        kind = kind or _prediction_type(answer)
        if kind == "number":
            vals = set(numbers_in(answer))
            return str(vals.pop()) if len(vals) == 1 else None
        if kind == "yesno":
            p = _polarity(answer)
            return None if p is None else ("yes" if p else "no")
        if kind == "set":
            s = as_set(answer)
            return None if s is None else ",".join(sorted(s)).replace("#", "")
        if kind == "choice":
            m = _CHOICE_REF.fullmatch(answer)
            return m.group(1).upper() if m else None
        return normalize_word(answer) or None
    except Exception:  # total
        return None


def _reference_error(reference: Any, kind: str) -> str:
    """Why `reference` cannot be read as its type `kind` (step 3), or "" when it can."""
    if reference is None:
        return "reference is None"
    if kind == "number" and _as_number(reference) is None:
        return f"reference is not a finite number: {reference!r:.60}"
    if kind == "set" and as_set(reference) is None:
        return f"reference is not a set: {reference!r:.60}"
    if kind == "word" and not normalize_word(str(reference)):
        return f"reference is empty: {reference!r:.60}"
    return ""


def _compare(pred: str, reference: Any, kind: str) -> tuple[bool, bool]:
    """(format, correct) of an answer content against a reference of type `kind` (step 4)."""
    if kind == "number":
        vals = set(numbers_in(pred))  # "2 or 3" is a hedge: neither the format nor the value of a number
        ref = _as_number(reference)
        return len(vals) == 1, len(vals) == 1 and ref is not None and close(vals.pop(), ref)
    if kind == "yesno":
        p = _polarity(pred)
        ref = reference if isinstance(reference, bool) else _polarity(str(reference))
        return p is not None, p is not None and p == ref
    if kind == "set":
        p, ref = as_set(pred), as_set(reference)
        return p is not None, p is not None and p == ref
    if kind == "choice":
        s = verify_choice(f"<answer>{pred}</answer>", reference)
        return s.parts["format"] == 1.0, s.value == 1.0
    p = normalize_word(pred)
    return bool(p), bool(p) and p == normalize_word(str(reference))


def verify_typed(completion: str, reference: Any) -> Score:
    """1.0 when the last `<answer>` matches the reference by the reference's type; parts: correct, format.

    Numbers compare by `normalize.close` (integers exactly, others within a relative 1e-6). A reference that
    cannot be read as its own type (None, NaN, an unreadable set, empty text) is unscorable. Never raises.

    >>> verify_typed("<think>2+1</think><answer>three</answer>", 3).parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_typed("<answer>blue, red</answer>", frozenset({"red"})).value
    0.0
    """
    try:
        kind = answer_type(reference)
        pred = extract_answer(completion)
        fmt, correct = _compare(pred[:MAX_ANSWER_CHARS], reference, kind) if pred is not None else (False, False)
        parts = {"correct": float(correct), "format": float(fmt)}
        error = _reference_error(reference, kind)
        if error:
            return Score.unscorable(error, parts)
        return Score(float(correct), parts, correct=correct)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"typed verifier: {type(e).__name__}: {e}")


__all__ = ["TYPES", "answer_type", "as_set", "normalize_word", "numbers_in", "typed_key", "verify_typed"]
