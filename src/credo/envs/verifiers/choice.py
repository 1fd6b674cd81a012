"""Multiple-choice letters (A–J) with a minimalist rule reward: 1 for the right letter, else 0 (AlphaMed style).

AlphaMed (arXiv 2505.17952) trains medical reasoning with nothing but this binary rule on multiple-choice
answers. The chosen letter is read, in order of preference, from the last `<answer>…</answer>` block, the last
`\\boxed{…}`, the last "answer is (C)" / "Answer: C" phrase, or a completion that is a lone letter ("C", "(c)",
"C."). Letters compare case-insensitively. A lower-case letter counts only where it stands alone, so that
"the answer is a number" is not read as choice A.
"""

from __future__ import annotations

import re
from typing import Any

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer
from credo.envs.verifiers.math import extract_boxed

LETTERS = "ABCDEFGHIJ"
# a letter standing alone: optional "(" or "[", the letter, optional ")" / "]" / "." / ":" and nothing else
_LONE = re.compile(r"\s*(?:\\text\{)?[(\[]?\s*([A-Ja-j])\s*[)\]]?[.:]?\s*\}?\s*", re.S)
# a letter at the start of a longer text: "C) Paris", "(C) Paris", "C. Paris", "C: Paris" (upper case only)
_LEADING = re.compile(r"\s*[(\[]?([A-J])(?:[)\].:]|\s*$)")
# "answer is (C)", "Answer: C", "answer: **C**", "correct option is C", "choice (C)"; groups: bracket, letter
_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option|choice)?\s*[:\-]?\s*\**\s*([(\[]?)\s*([A-Ja-j])\b", re.I
)


def _phrase_letter(m: re.Match[str]) -> str | None:
    """The letter of an "answer is X" match, or None where the letter is likely a word.

    A lower-case letter counts only when bracketed or followed by punctuation or the end ("answer is a number"
    is no choice); an upper-case "I" followed by a lower-case word is the pronoun ("answer: I think ...").
    """
    bracket, letter = m.group(1), m.group(2)
    rest = m.string[m.end() :].lstrip()
    bracketed = bool(bracket) or rest[:1] in (")", "]")
    if letter.isupper():
        return None if letter == "I" and not bracketed and rest[:1].islower() else letter
    return letter.upper() if bracketed or not rest or rest[0] in ".,;:!*\n" else None


def _last_phrase_letter(text: str) -> str | None:
    for m in reversed(list(_PHRASE.finditer(text))):
        letter = _phrase_letter(m)
        if letter is not None:
            return letter
    return None


def _letter_in(text: str) -> str | None:
    """The letter a short answer text (tag or box content) names, or None."""
    m = _LONE.fullmatch(text) or _LEADING.match(text)
    return m.group(1).upper() if m else _last_phrase_letter(text)


def extract_choice(completion: str) -> str | None:
    """The chosen letter (upper case), or None.

    >>> extract_choice("reasoning... <answer>(c)</answer>")
    'C'
    >>> extract_choice("Thus the answer is (B) because ...")
    'B'
    >>> extract_choice("the answer is a number") is None
    True
    """
    for inner in (extract_answer(completion), extract_boxed(completion)):  # found from the end, content capped
        if inner is not None:
            return _letter_in(inner)
    text = completion.rstrip()[-MAX_CHARS:]  # no tag: regexes see only the tail
    letter = _last_phrase_letter(text)
    if letter is not None:
        return letter
    m = _LONE.fullmatch(text)
    return m.group(1).upper() if m else None


def _reference_letter(reference: Any) -> str | None:
    m = re.match(r"\s*[(\[]?([A-Ja-j])(?:[)\].:]|\s|$)", str(reference))
    return m.group(1).upper() if m else None


def verify_choice(completion: str, reference: Any) -> Score:
    """1.0 when the chosen letter equals the reference letter (e.g. "C", "(c)", "C. Paris"); parts: correct, format.

    `format` is 1 when a letter could be read at all. A reference that names no letter A–J is unscorable.
    Never raises.

    >>> verify_choice("<answer>C</answer>", "c").parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_choice("The answer is \\\\boxed{D}", "C").value
    0.0
    """
    try:
        chosen = extract_choice(completion)
        ref = _reference_letter(reference)
        correct = chosen is not None and ref is not None and chosen == ref
        parts = {"correct": float(correct), "format": float(chosen is not None)}
        if ref is None:
            return Score.unscorable(f"reference names no choice letter: {reference!r:.60}", parts)
        return Score(float(correct), parts, correct=correct)
    except Exception as e:  # total: a verifier never raises
        return Score.unscorable(f"choice verifier: {type(e).__name__}: {e}")


__all__ = ["LETTERS", "extract_choice", "verify_choice"]
