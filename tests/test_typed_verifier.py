"""Structured Verbal Verification (`verifiers/typed.py`): a table of (prediction, reference, correct, format)."""

from fractions import Fraction

import pytest

from credo.envs.verifiers import get_verifier
from credo.envs.verifiers.typed import answer_type, as_set, numbers_in, typed_key, verify_typed


def tag(s: str) -> str:
    return f"<think>working</think><answer>{s}</answer>"


CASES = [
    # numbers
    (tag("3"), 3, 1.0, 1.0),
    (tag(" 3 "), "3", 1.0, 1.0),
    (tag("three"), 3, 1.0, 1.0),
    (tag("Three."), 3, 1.0, 1.0),
    (tag("3.0"), 3, 1.0, 1.0),
    (tag("3 (three)"), 3, 1.0, 1.0),  # two readings of one value
    (tag("3 red circles"), 3, 1.0, 1.0),
    (tag("2 or 3"), 3, 0.0, 0.0),  # a hedge is wrong, and two numbers are not the format of one
    (tag("4"), 3, 0.0, 1.0),
    (tag("-2"), -2, 1.0, 1.0),
    (tag("minus two"), -2, 1.0, 1.0),
    (tag("2"), -2, 0.0, 1.0),
    (tag("twenty-one"), 21, 1.0, 1.0),
    (tag("1,234"), 1234, 1.0, 1.0),
    (tag("3/4"), 0.75, 1.0, 1.0),
    (tag("0.1"), 0.1, 1.0, 1.0),
    (tag("none"), 0, 1.0, 1.0),
    (tag("someone"), 1, 0.0, 0.0),  # "one" inside a word is no number
    (tag("r1c2"), 1, 0.0, 0.0),  # digits glued to letters are no number
    (tag(""), 3, 0.0, 0.0),
    ("the answer is 3", 3, 0.0, 0.0),  # no <answer> tag
    (tag("3") + " then <answer>4</answer>", 3, 0.0, 1.0),  # the last tag counts
    ("<answer>3", 3, 0.0, 0.0),  # unclosed
    # yes / no
    (tag("yes"), "yes", 1.0, 1.0),
    (tag("Yes."), "yes", 1.0, 1.0),
    (tag("true"), True, 1.0, 1.0),
    (tag("no"), False, 1.0, 1.0),
    (tag("No, it is to the right."), "no", 1.0, 1.0),  # "right" is not a yes
    (tag("not true"), "no", 1.0, 1.0),
    (tag("yes, no"), "yes", 0.0, 0.0),  # both polarities: a hedge
    (tag("maybe"), "yes", 0.0, 0.0),
    (tag("yes"), "no", 0.0, 1.0),
    (tag("nope"), "no", 0.0, 0.0),
    # sets
    (tag("blue, red"), frozenset({"red", "blue"}), 1.0, 1.0),
    (tag("Red and blue"), frozenset({"red", "blue"}), 1.0, 1.0),
    (tag("{red; blue; red}"), ["blue", "red"], 1.0, 1.0),  # repeats ignored
    (tag("the circles and squares"), {"circle", "square"}, 1.0, 1.0),  # articles, plurals
    (tag("red"), frozenset({"red", "blue"}), 0.0, 1.0),
    (tag("red, blue, green"), frozenset({"red", "blue"}), 0.0, 1.0),
    (tag("red or blue"), frozenset({"red", "blue"}), 0.0, 1.0),  # "or" is no separator
    (tag("none"), frozenset(), 1.0, 1.0),
    (tag("{}"), frozenset(), 1.0, 1.0),
    (tag("red"), frozenset(), 0.0, 1.0),
    (tag("3, 2"), frozenset({2, 3}), 1.0, 1.0),
    (tag("three and two"), "2, 3", 1.0, 1.0),
    # words (colours)
    (tag("blue"), "blue", 1.0, 1.0),
    (tag("  Blue. "), "blue", 1.0, 1.0),
    (tag("The answer is blue"), "blue", 1.0, 1.0),
    (tag("dark blue"), "blue", 0.0, 1.0),
    (tag("blue or red"), "blue", 0.0, 1.0),
    (tag("red"), "blue", 0.0, 1.0),
    # multiple choice
    (tag("C"), "C", 1.0, 1.0),
    (tag("(c)"), "C", 1.0, 1.0),
    (tag("C) Paris"), "(C)", 1.0, 1.0),
    (tag("B"), "C", 0.0, 1.0),
    (tag("Paris"), "C", 0.0, 0.0),
]


@pytest.mark.parametrize("completion,reference,correct,fmt", CASES)
def test_typed_table(completion, reference, correct, fmt):
    s = verify_typed(completion, reference)
    assert (s.value, s.parts["correct"], s.parts["format"]) == (correct, correct, fmt)


def test_answer_types():
    assert [answer_type(r) for r in (3, 2.5, Fraction(1, 3), True, "no", "Yes", "-2", "twelve")] == [
        "number", "number", "number", "yesno", "yesno", "yesno", "number", "number"]
    assert [answer_type(r) for r in ("A", "(b)", "red, blue", "a and b", "none", {1}, "blue", "dark blue")] == [
        "choice", "choice", "set", "set", "set", "set", "word", "word"]


GARBAGE = ["", "<answer>", "</answer><answer>", "<answer>" * 10_000, "<answer>" + "9" * 5000 + "</answer>",
           "<answer>\x00\ufffd\u2212</answer>", "<answer>1/0</answer>", "<answer>1e999999999</answer>",
           "<answer>" + "red, " * 10_000 + "</answer>", "<answer>not not not yes</answer>"]
REFERENCES = [3, -1, 0.5, float("nan"), float("inf"), True, "yes", "C", "red", frozenset(), frozenset({"red"}),
              None, object(), [1, [2]], {"k": 1}, "", "\x00"]


def test_totality_on_garbage():
    for completion in GARBAGE:
        for reference in REFERENCES:
            s = verify_typed(completion, reference)
            assert s.value in (0.0, 1.0) and set(s.parts) == {"correct", "format"}
    assert verify_typed(None, 3).value == 0.0  # type: ignore[arg-type]
    assert typed_key(None) is None and typed_key("") is None
    for completion in GARBAGE:
        assert typed_key(completion) is None or isinstance(typed_key(completion), str)


def test_helpers():
    assert numbers_in("2 and three, minus 4") == [2, 3, -4]
    assert as_set("red, , blue") == frozenset({"red", "blue"})
    assert typed_key("3 (three)") == typed_key("three") == "3" and typed_key("two or 3") != "3"
    assert typed_key("No.") == typed_key("false") == "no" and typed_key("none") == ""
    assert typed_key("Blue and red.") == typed_key("red, blue") == "blue,red"


def test_registered():
    assert get_verifier("typed") is verify_typed
