"""The math, multiple-choice and numeric verifiers: a table of (completion, reference, expected), and totality."""

import random
import threading
import time

import pytest

from credo.envs.base import Score
from credo.envs.verifiers import get_verifier
from credo.envs.verifiers.choice import extract_choice, verify_choice
from credo.envs.verifiers.math import extract_boxed, verify_math
from credo.envs.verifiers.numeric import parse_numbers, verify_numeric

MATH = [
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("<answer>42</answer>", 42, 1.0),
    ("<answer>41</answer>", "42", 0.0),
    ("so \\boxed{1} first, then finally \\boxed{2}", "2", 1.0),  # the last box counts
    ("so \\boxed{2} first, then finally \\boxed{1}", "2", 0.0),
    ("<answer>1/2</answer>", "\\frac{1}{2}", 1.0),
    ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),  # \frac vs decimal
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\frac{3}{4}}", "\\frac{2}{3}", 0.0),
    ("<answer>$x = 2$</answer>", "2", 1.0),  # an equation's right-hand side
    ("<answer>5 cm</answer>", "5", 1.0),  # units
    ("<answer>5\\text{ cm}</answer>", "5", 1.0),
    ("\\boxed{12\\,\\mathrm{kg}}", "12", 1.0),
    ("<answer>6 cm</answer>", "5", 0.0),
    ("<answer>90^\\circ</answer>", "90", 1.0),
    ("<answer>\\$3.50</answer>", "3.5", 1.0),  # escaped currency sign
    ("<answer>\\sqrt{2}/2</answer>", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{\\pi}", "\\pi", 1.0),
    ("<answer>(1,2]</answer>", "(1,2]", 1.0),  # intervals
    ("<answer>[1,2]</answer>", "(1,2]", 0.0),
    ("<answer>\\{3, 1\\}</answer>", "\\{1, 3\\}", 1.0),  # sets, in any order
    ("<answer>x^2+2x+1</answer>", "(x+1)^2", 1.0),  # symbolic equality
    ("\\boxed{1,234}", "1234", 1.0),
    ("<answer>10\\%</answer>", "0.1", 1.0),
    ("<answer>The answer is 5</answer>", 5, 1.0),  # free text inside the tag
    ("we get x = 7 in the end", "7", 1.0),  # no tag, no box: the final expression
    ("<answer>2</answer>", ["1", "2"], 1.0),  # several acceptable references
    ("<answer></answer>", "1", 0.0),
    ("", "1", 0.0),
]

CHOICE = [
    ("reasoning... <answer>C</answer>", "C", 1.0),
    ("<answer>(c)</answer>", "C", 1.0),  # case-insensitive
    ("<answer>C) Paris</answer>", "c", 1.0),
    ("<answer>B</answer>", "C", 0.0),
    ("Thus the answer is (B) because it fits.", "B", 1.0),
    ("Answer: D", "D", 1.0),
    ("The correct option is **F**.", "F", 1.0),
    ("so \\boxed{E}", "E", 1.0),
    ("so \\boxed{\\text{E}}", "(E)", 1.0),
    ("C", "C", 1.0),  # a lone letter
    ("(d).", "D", 1.0),
    ("the answer is a number", "A", 0.0),  # the article "a" is no choice
    ("Answer: I think so", "I", 0.0),  # the pronoun "I" is no choice
    ("the answer is (a)", "A", 1.0),
    ("I cannot tell", "A", 0.0),
    ("<answer>Paris</answer>", "C", 0.0),
    ("<answer>C</answer>", "C. Paris", 1.0),  # reference with its option text
]

NUMERIC = [
    ("<answer>1,234</answer>", 1234, 1.0),
    ("<answer>1,234,567.5</answer>", "1234567.5", 1.0),
    ("<answer>-0.5</answer>", "-1/2", 1.0),
    ("<answer>−7</answer>", -7, 1.0),  # unicode minus
    ("<answer>6.02e23</answer>", "6.02e23", 1.0),
    ("\\boxed{1.5 \\times 10^{3}}", 1500, 1.0),
    ("<answer>3/4</answer>", 0.75, 1.0),
    ("<answer>\\frac{3}{4}</answer>", "0.75", 1.0),
    ("<answer>50%</answer>", 0.5, 1.0),  # a percentage matches the fraction ...
    ("<answer>50\\%</answer>", 50, 1.0),  # ... and the number
    ("<answer>1.0000001</answer>", 1, 1.0),  # within the relative 1e-6
    ("<answer>1.00001</answer>", 1, 0.0),  # 1e-5 off: outside it
    ("<answer>1.001</answer>", 1, 0.0),
    ("<answer>12 kg</answer>", 12, 1.0),  # units after the number
    ("<answer>12.0 m/s</answer>", 12, 1.0),
    ("<answer>13 kg</answer>", 12, 0.0),
    ("<answer>$2,500</answer>", 2500, 1.0),
    ("the total is 17.", 17, 1.0),  # no tag: the last number of the text
    ("<answer>18</answer>", 17, 0.0),
    ("<answer>abc</answer>", 1, 0.0),
    ("<answer>0</answer>", 1e-7, 0.0),  # no absolute tolerance against a non-zero reference
    ("<answer>1e-13</answer>", 0, 1.0),  # an absolute 1e-12 only against an exact zero
]


@pytest.mark.parametrize(("completion", "reference", "expected"), MATH)
def test_math(completion, reference, expected):
    assert verify_math(completion, reference).value == expected


@pytest.mark.parametrize(("completion", "reference", "expected"), CHOICE)
def test_choice(completion, reference, expected):
    assert verify_choice(completion, reference).value == expected


@pytest.mark.parametrize(("completion", "reference", "expected"), NUMERIC)
def test_numeric(completion, reference, expected):
    assert verify_numeric(completion, reference).value == expected


def test_format_part():
    assert verify_math("\\boxed{3}", "4").parts == {"correct": 0.0, "format": 1.0}
    assert verify_math("it is 3", "3").parts == {"correct": 1.0, "format": 0.0}
    assert verify_choice("no letter here", "A").parts == {"correct": 0.0, "format": 0.0}
    assert verify_numeric("<answer>5</answer>", 6).parts == {"correct": 0.0, "format": 1.0}
    assert verify_numeric("x is 5", 5).parts == {"correct": 1.0, "format": 0.0}


def test_numeric_tolerances():
    assert verify_numeric("<answer>1.001</answer>", 1, rel_tol=1e-2).value == 1.0
    assert verify_numeric("<answer>1.0000001</answer>", 1, rel_tol=0).value == 0.0
    assert verify_numeric("<answer>1e-13</answer>", 0, zero_tol=0).value == 0.0
    assert [[float(v) for v in r] for r in parse_numbers("1.5e-3 and -2/4")] == [[0.0015], [-0.5]]


def test_extractors():
    assert extract_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
    assert extract_choice("The answer is C because...") == "C"
    assert extract_choice("nothing") is None


def test_registry_names_resolve():
    assert get_verifier("math") is verify_math
    assert get_verifier("mcq") is verify_choice
    assert get_verifier("numeric") is verify_numeric


def _garbage() -> list:
    rng = random.Random(0)
    return [
        "", "\\boxed{" * 100_000, "{" * 1_000_000, "<answer>" * 100_000, "9" * 1_000_000, "\\frac{" * 50_000,
        "".join(chr(rng.randrange(1, 0x3000)) for _ in range(100_000)), "<answer>" + "1/" * 50_000 + "</answer>",
        "answer is " * 100_000, "<answer>1e999999999</answer>", "\x00\xff" * 1000, None, 12345, b"bytes",
    ]


@pytest.mark.parametrize("verifier", [verify_math, verify_choice, verify_numeric])
def test_total_on_garbage_and_huge_inputs(verifier):
    for completion in _garbage():
        for reference in ("1", None, object(), ["A"], float("nan")):
            t = time.perf_counter()
            s = verifier(completion, reference)
            assert isinstance(s, Score) and s.value in (0.0, 1.0), (completion, reference)
            assert time.perf_counter() - t < 5.0, (repr(completion)[:40], reference)


def test_math_works_off_the_main_thread():
    """math_verify's own signal.alarm timeout is off, so the verifier runs on any thread (credo times it out)."""
    out = []
    th = threading.Thread(target=lambda: out.append(verify_math("<answer>\\frac{1}{2}</answer>", "0.5").value))
    th.start()
    th.join(60)
    assert out == [1.0]
