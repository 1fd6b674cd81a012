"""Math answers checked with HuggingFace `math_verify`: boxed or plain, fractions, LaTeX, sets, intervals.

The prediction is the last `<answer>…</answer>` block if there is one, else the last `\\boxed{…}`, else the whole
completion (math_verify then looks for the final expression itself). The extracted answer is read as LaTeX
(`\\boxed{…}` around it) and, failing a match, as plain text, so `\\frac{1}{2}`, `1/2`, `0.5` and `$x = 0.5$` all
match a reference of `1/2`.

math_verify's own timeouts use `signal.alarm`, which works only on the main thread; they are switched off here
(`parsing_timeout=None`, `timeout_seconds=None`) and credo enforces a wall-clock limit per item instead, in
`credo.envs.runner.VerifyRunner`. A pathological answer such as `9^{9^{9}}` can make sympy run for minutes:
run this verifier through a runner with `workers >= 1` (the default) so such an item is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import MAX_CHARS, extract_answer

# imported with the module, so that a verification worker pays for sympy while it starts, not on its first item
math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # credo enforces the timeouts (module docstring): no warning
math_verify.grader.TIMEOUT_WARNING_SHOWN = True
_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`) with balanced braces, or None.

    >>> extract_boxed(r"so \\boxed{1} and finally \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_boxed(r"\\boxed{unclosed") is None
    True
    """
    text = text[-MAX_CHARS:]
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
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
    return completion[-MAX_CHARS:], False


def _parse_all(text: str, boxed: bool) -> list[list[Any]]:
    """Parsed readings of `text`: as LaTeX inside a box (when `boxed`), then as free text."""
    readings = []
    if boxed and "$" not in text:
        readings.append(parse(f"\\boxed{{{text}}}", _CONFIG, parsing_timeout=None))
    readings.append(parse(text, _CONFIG, parsing_timeout=None))
    return [r for r in readings if r]


def _gold(reference: Any) -> list[list[Any]]:
    refs = reference if isinstance(reference, list | tuple) else [reference]
    out: list[list[Any]] = []
    for ref in refs:
        text = str(ref).strip()
        out.extend(_parse_all(text, boxed="\\boxed" not in text) or [[text]])
    return out


def _matches(gold: Sequence[list[Any]], pred: Sequence[list[Any]]) -> bool:
    return any(verify(g, p, timeout_seconds=None) for g in gold for p in pred)


def verify_math(completion: str, reference: Any) -> Score:
    """1.0 when the extracted answer equals `reference` mathematically (math_verify); parts: correct, format.

    `reference` is a string (LaTeX or plain), a number, or a list of acceptable answers. `format` is 1 when the
    answer came from a non-empty `<answer>` tag or `\\boxed{}`. Never raises; an internal error scores 0.

    >>> verify_math("so <answer>\\\\frac{1}{2}</answer>", "0.5").parts
    {'correct': 1.0, 'format': 1.0}
    >>> verify_math("The result is \\\\boxed{3}", "4").value
    0.0
    """
    fmt = correct = False
    try:
        answer, fmt = extract_math_answer(completion)
        fmt = fmt and bool(answer)
        answer = answer.replace("\\$", "")  # an escaped currency sign ("\\$3.50") is not maths
        pred = _parse_all(answer, boxed=fmt)
        correct = bool(pred) and _matches(_gold(reference), pred)
    except Exception:  # total: a verifier never raises
        correct = False
    return Score(float(correct), {"correct": float(correct), "format": float(fmt)})


__all__ = ["extract_boxed", "extract_math_answer", "verify_math"]
