"""The verifier table (issue 12): (completion, reference, verifier, expected value) rows over the integer, math,
numeric, mcq and typed verifiers, grouped by the kind of input that used to give a wrong reward.

Every expected value is the right one, worked out by hand (the comment says why where it is not obvious); the
false-positive traps expect 0.0. Kinds: 1 fragments of an expression; 2 tolerance (tiny values, large integers,
rounding); 3 answers followed by more than 10,000 characters; 8 thousands separators; 9 units and exponents;
"traps" percent, intervals, sets, equations, scientific notation, prose and hedges; "base" ordinary answers.
The `format` part (kind 12) has its own table below.
"""

import pytest

from credo.envs.verifiers import get_verifier

PAD = "Let me double-check this once more, step by step. " * 220  # 11,000 characters, no digit


def T(content: str) -> str:
    return f"<answer>{content}</answer>"


ROWS = [
    # kind 1: a fragment of an expression is not the expression
    ("1", "math", T("2"), "2\\sqrt{3}", 0.0),  # the case
    ("1", "math", T("2\\sqrt{3}"), "2", 0.0),
    ("1", "math", T("4*sqrt(2)"), "4", 0.0),  # the case
    ("1", "math", T("4\\sqrt{2}"), "4", 0.0),
    ("1", "math", T("4\\sqrt{2}"), "\\sqrt{32}", 1.0),
    ("1", "math", T("a+b=10"), "a-b=10", 0.0),  # the case
    ("1", "math", T("a+b=10"), "10", 0.0),  # an equation answers a number only as an assignment
    ("1", "math", T("x=10"), "10", 1.0),
    ("1", "math", T("3+7 = 10"), "10", 1.0),  # a worked computation answers its result (the untagged reply does)
    ("1", "math", T("3+7 = 11"), "10", 0.0),  # ... its written result, right or wrong
    ("1", "math", T("2*5 = 7+3 = 10"), "10", 1.0),
    ("1", "math", T("2 2/3"), "2", 0.0),  # the case: a mixed number
    ("1", "math", T("2 2/3"), "8/3", 1.0),
    ("1", "math", T("2\\frac{2}{3}"), "\\frac{8}{3}", 1.0),
    ("1", "math", T("The answer is 2\\sqrt{3}"), "2", 0.0),
    ("1", "math", T("The answer is 2\\sqrt{3}"), "2\\sqrt{3}", 1.0),
    ("1", "math", T("2x"), "2", 0.0),
    ("1", "math", T("3\\pi"), "3", 0.0),
    ("1", "math", T("\\frac{\\sqrt{2}}{2}"), "2", 0.0),
    ("1", "math", "so \\boxed{2\\sqrt{3}}", "2", 0.0),
    ("1", "math", T("4"), "4\\sqrt{2}", 0.0),  # a bare reference is read whole, not as its leading coefficient
    ("1", "numeric", T("2\\sqrt{3}"), 3, 0.0),
    ("1", "numeric", T("2\\sqrt{3}"), 2, 0.0),
    ("1", "numeric", T("4*sqrt(2)"), 2, 0.0),
    ("1", "numeric", T("2 2/3"), "2/3", 0.0),
    ("1", "numeric", T("2 2/3"), "8/3", 1.0),
    ("1", "numeric", T("\\pi/2"), 2, 0.0),
    ("1", "typed", T("2\\sqrt{2}"), 2, 0.0),
    ("1", "typed", T("2 2/3"), 2, 0.0),  # two numbers: a hedge
    ("1", "integer", T("2\\sqrt{3}"), 2, 0.0),
    ("1", "integer", T("4*2"), 4, 0.0),
    ("1", "mcq", T("B and C"), "B", 0.0),
    ("1", "mcq", T("A or B"), "A", 0.0),
    # kind 2: a relative tolerance (1e-6), integers exact, an absolute one only against an exact zero
    ("2", "math", T("\\frac{1}{2^{98}}"), "\\frac{1}{2^{99}}", 0.0),  # the case
    ("2", "math", T("\\frac{1}{2^{99}}"), "2^{-99}", 1.0),
    ("2", "math", T("1e-7"), "2e-7", 0.0),
    ("2", "math", T("0.0000001"), "0.0000002", 0.0),
    ("2", "math", T("1.5\\times 10^{-7}"), "1.5e-7", 1.0),
    ("2", "math", T("1234567"), "1234568", 0.0),  # 8e-7 relative, but integers compare exactly
    ("2", "math", T("0.333333"), "\\frac{1}{3}", 1.0),  # |diff| = 1e-6 * 1/3 exactly: on the bound
    ("2", "math", T("0.3333"), "\\frac{1}{3}", 0.0),
    ("2", "math", T("3.14159"), "\\pi", 1.0),  # 8.4e-7 relative
    ("2", "math", T("3.1416"), "\\pi", 0.0),  # 2.3e-6 relative
    ("2", "math", T("1.0000001"), "1", 1.0),
    ("2", "math", T("1e-13"), "0", 1.0),  # within the absolute 1e-12 of an exact zero
    ("2", "math", T("1e-7"), "0", 0.0),
    ("2", "math", T("0"), "1e-7", 0.0),
    ("2", "math", T("\\{1e-7, 2\\}"), "\\{2e-7, 2\\}", 0.0),  # inside a set
    ("2", "math", T("[0, 1e-7)"), "[0, 2e-7)", 0.0),  # an interval's endpoint
    ("2", "numeric", T("1e-7"), 2e-7, 0.0),  # the case
    ("2", "numeric", T("2e-7"), 2e-7, 1.0),
    ("2", "numeric", T("1.0000001"), 1, 1.0),
    ("2", "numeric", T("1.00001"), 1, 0.0),
    ("2", "numeric", T("1234567"), 1234568, 0.0),
    ("2", "numeric", T("123456789012345678901"), "123456789012345678902", 0.0),
    ("2", "numeric", T("0.333333"), "1/3", 1.0),
    ("2", "numeric", T("0"), 1e-7, 0.0),
    ("2", "numeric", T("1e-13"), 0, 1.0),
    ("2", "numeric", T("6.02e23"), 6.02e23, 1.0),
    ("2", "numeric", T("6.02e23"), 6.03e23, 0.0),
    ("2", "numeric", T("0.3"), 0.1 + 0.2, 1.0),  # a reference computed in floating point
    ("2", "typed", T("1.0000001"), 1, 1.0),
    ("2", "typed", T("1000001"), 1000000, 0.0),  # 1e-6 relative, but integers compare exactly
    ("2", "typed", T("0.0000001"), 0.0000002, 0.0),
    # kind 3: the answer, then more than 10,000 characters
    ("3", "integer", T("42") + PAD, 42, 1.0),
    ("3", "math", T("42") + PAD, "42", 1.0),
    ("3", "numeric", T("42") + PAD, 42, 1.0),
    ("3", "typed", T("42") + PAD, 42, 1.0),
    ("3", "mcq", T("C") + PAD, "C", 1.0),
    ("3", "math", "\\boxed{42}" + PAD, "42", 1.0),
    ("3", "numeric", "\\boxed{7}" + PAD, 7, 1.0),
    ("3", "math", T("41") + PAD, "42", 0.0),
    ("3", "math", PAD + T("42") + PAD, "42", 1.0),
    ("3", "typed", T("blue") + PAD, "blue", 1.0),
    ("3", "integer", T("1") + PAD + T("2") + PAD, 2, 1.0),  # the last tag counts
    ("3", "integer", T("1") + PAD + T("2") + PAD, 1, 0.0),
    ("3", "numeric", "<answer>" + PAD + "42</answer>", 42, 1.0),  # a long tag: its content's tail is read
    ("3", "integer", "<answer>" + PAD + "42</answer>", 42, 0.0),  # ... which is not one integer
    # kind 8: thousands separators, plain and LaTeX
    ("8", "numeric", T("10,\\!000"), 10000, 1.0),  # the case (the MATH dataset's spelling)
    ("8", "numeric", T("1\\,000"), 1000, 1.0),
    ("8", "numeric", T("1{,}000"), 1000, 1.0),
    ("8", "numeric", T("10,000"), 10000, 1.0),
    ("8", "numeric", T("1,000,000"), 1e6, 1.0),
    ("8", "numeric", T("1,234.5"), 1234.5, 1.0),
    ("8", "numeric", T("1\u2009000"), 1000, 1.0),  # a thin space
    ("8", "numeric", T("10,000"), 10, 0.0),
    ("8", "numeric", T("1\\,000"), 1, 0.0),
    ("8", "math", T("1\\,000"), "1000", 1.0),  # the case
    ("8", "math", T("10,\\!000"), "10000", 1.0),
    ("8", "math", T("10{,}000"), "10^4", 1.0),
    ("8", "math", T("1,000"), "1000", 1.0),
    ("8", "math", T("1,000,000"), "10^6", 1.0),
    ("8", "math", T("1\\,000"), "1", 0.0),
    ("8", "math", T("1000"), "1\\,000", 1.0),  # a reference with a separator
    ("8", "integer", T("10,000"), 10000, 1.0),
    ("8", "integer", T("10,\\!000"), 10000, 1.0),
    ("8", "integer", T("1\\,000"), 1000, 1.0),
    ("8", "integer", T("1,00"), 100, 0.0),  # not groups of three
    ("8", "integer", T("10,000"), 10, 0.0),
    ("8", "typed", T("1,000"), 1000, 1.0),
    ("8", "typed", T("1\\,000"), 1000, 1.0),
    # kind 9: units with exponents; exponents are not answers
    ("9", "numeric", T("5 \\text{ m}^2"), 5, 1.0),  # the case
    ("9", "numeric", T("5 \\text{ m}^2"), 2, 0.0),
    ("9", "numeric", T("5 m^2"), 5, 1.0),
    ("9", "numeric", T("12\\,\\mathrm{cm}^{3}"), 12, 1.0),
    ("9", "numeric", T("9.8 m/s^2"), 9.8, 1.0),
    ("9", "numeric", T("3 \\text{ s}^{-1}"), 3, 1.0),
    ("9", "numeric", T("3 \\text{ s}^{-1}"), -1, 0.0),
    ("9", "numeric", T("2^{10}"), 1024, 1.0),  # a power of numbers is evaluated
    ("9", "numeric", T("2^{10}"), 10, 0.0),
    ("9", "numeric", T("10^{-7}"), 1e-7, 1.0),
    ("9", "math", T("5 \\text{ m}^2"), "5", 1.0),
    ("9", "math", T("5 m^2"), "5", 1.0),
    ("9", "math", T("5\\text{ cm}^{3}"), "5", 1.0),
    ("9", "math", T("5 \\text{ m}^2"), "2", 0.0),
    ("9", "math", T("2^{10}"), "1024", 1.0),
    ("9", "typed", T("5 m^2"), 5, 1.0),
    ("9", "typed", T("5 \\text{ m}^2"), 5, 1.0),
    ("9", "integer", T("5 m^2"), 5, 0.0),  # not a bare integer
    # traps: percent, intervals, sets, equations, scientific notation, prose, hedges
    ("traps", "math", T("10\\%"), "0.1", 1.0),
    ("traps", "math", T("10\\%"), "10", 1.0),
    ("traps", "math", T("1000\\%"), "10\\%", 0.0),  # 1000% is not 10% although 1000/100 = 10
    ("traps", "math", T("25%"), "0.25", 1.0),
    ("traps", "numeric", T("50%"), 0.5, 1.0),
    ("traps", "numeric", T("1000%"), "10%", 0.0),
    ("traps", "numeric", T("0.1"), "10%", 1.0),
    ("traps", "math", T("(1,2]"), "(1,2]", 1.0),
    ("traps", "math", T("[1,2]"), "(1,2]", 0.0),
    ("traps", "math", T("(1, 2)"), "(1,2)", 1.0),
    ("traps", "math", T("[1,\\infty)"), "[1,\\infty)", 1.0),
    ("traps", "math", T("(1,\\infty)"), "[1,\\infty)", 0.0),
    ("traps", "math", T("\\{3, 1\\}"), "\\{1, 3\\}", 1.0),
    ("traps", "math", T("\\{1,2,3\\}"), "\\{1,2\\}", 0.0),
    ("traps", "math", T("2, 3"), "3, 2", 1.0),
    ("traps", "math", T("y = 2x + 1"), "y=2x+1", 1.0),
    ("traps", "math", T("y = 2x - 1"), "y=2x+1", 0.0),
    ("traps", "math", T("x = 5 and y = 3"), "x=5, y=3", 1.0),
    ("traps", "math", T("6.02e23"), "6.02\\times10^{23}", 1.0),
    ("traps", "math", T("6.02e23"), "6.03\\times10^{23}", 0.0),
    ("traps", "math", T("2.5e-3"), "0.0025", 1.0),
    ("traps", "numeric", T("2.5e-3"), 0.0025, 1.0),
    ("traps", "math", T("12 dollars"), "12", 1.0),
    ("traps", "math", T("The answer is 5."), "5", 1.0),
    ("traps", "math", T("5 or 6"), "5", 0.0),  # a hedge
    ("traps", "math", T("5, but maybe 6"), "6", 0.0),
    ("traps", "math", T("x^2+2x+1"), "(x+1)^2", 1.0),
    ("traps", "math", T("-\\infty"), "\\infty", 0.0),
    ("traps", "math", T("3-4i"), "3+4i", 0.0),
    ("traps", "math", T("\\frac{1}{2}"), "0.5", 1.0),
    # base: ordinary answers
    ("base", "integer", T("5"), 5, 1.0),
    ("base", "integer", T("+5"), 5, 1.0),
    ("base", "integer", T("5.0"), 5, 0.0),
    ("base", "integer", T("\u22123"), -3, 1.0),  # a Unicode minus
    ("base", "integer", "2+3=5, so 5", 5, 0.0),  # no tag, no answer
    ("base", "math", T("\\sqrt{2}/2"), "\\frac{\\sqrt{2}}{2}", 1.0),
    ("base", "math", T("\\$3.50"), "3.5", 1.0),
    ("base", "math", "we get x = 7 in the end", "7", 1.0),
    ("base", "math", T("Paris"), "paris", 1.0),  # a word compared as a case-folded string
    ("base", "numeric", T("-0.5"), "-1/2", 1.0),
    ("base", "numeric", T("12 kg"), 12, 1.0),
    ("base", "numeric", "the total is 17.", 17, 1.0),
    ("base", "mcq", T("C"), "C", 1.0),
    ("base", "mcq", T("(c)"), "C", 1.0),
    ("base", "mcq", T("B"), "C", 0.0),
    ("base", "mcq", "the answer is a number", "A", 0.0),
    ("base", "mcq", "Answer: I think so", "I", 0.0),
    ("base", "mcq", "so \\boxed{D}", "D", 1.0),
    ("base", "typed", T("three"), 3, 1.0),
    ("base", "typed", T("3 (three)"), 3, 1.0),
    ("base", "typed", T("2 or 3"), 3, 0.0),
    ("base", "typed", T("yes"), True, 1.0),
    ("base", "typed", T("not true"), True, 0.0),
    ("base", "typed", T("red and blue"), frozenset({"blue", "red"}), 1.0),
    ("base", "typed", T("blue"), "Blue.", 1.0),
    ("base", "typed", T("(c)"), "C", 1.0),
]


def _id(row) -> str:
    kind, name, completion, reference, _ = row
    return f"{kind}-{name}-{completion[:24]!r}-{str(reference)[:16]!r}"


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_table(row):
    _, name, completion, reference, expected = row
    s = get_verifier(name)(completion, reference)
    assert s.scorable, s.reason
    assert s.value == expected
    assert s.correct is (expected == 1.0)  # kind 10: every verifier sets `correct`


def test_table_size_and_kinds():
    """The issue asks for >= 150 rows over all five verifiers and >= 5 rows of each kind."""
    assert len(ROWS) >= 150
    assert {r[1] for r in ROWS} == {"integer", "math", "numeric", "mcq", "typed"}
    counts = {k: sum(r[0] == k for r in ROWS) for k in ("1", "2", "3", "8", "9", "traps", "base")}
    assert min(counts.values()) >= 5, counts


# kind 12: format credit only for a non-empty answer that reads as the expected type
FORMAT = [
    ("integer", T(""), 5, 0.0),
    ("integer", T("abc"), 5, 0.0),
    ("integer", T("7"), 5, 1.0),  # wrong, but well formed
    ("math", T(""), "5", 0.0),
    ("math", T("I don't know"), "5", 0.0),
    ("math", T("x"), "5", 0.0),  # a symbol where a number is expected
    ("math", T("7"), "5", 1.0),
    ("math", T("x = 7"), "5", 1.0),
    ("math", "it is 5", "5", 0.0),  # right, but not in a tag or box
    ("numeric", T(""), 5, 0.0),
    ("numeric", T("abc"), 5, 0.0),
    ("numeric", T("2\\sqrt{3}"), 5, 0.0),
    ("numeric", T("7"), 5, 1.0),
    ("mcq", T(""), "C", 0.0),
    ("mcq", T("Paris"), "C", 0.0),
    ("mcq", T("D"), "C", 1.0),
    ("typed", T(""), 3, 0.0),
    ("typed", T("2 or 3"), 3, 0.0),
    ("typed", T("blue"), 3, 0.0),
    ("typed", T("4"), 3, 1.0),
]


@pytest.mark.parametrize(("name", "completion", "reference", "expected"), FORMAT)
def test_format_part(name, completion, reference, expected):
    assert get_verifier(name)(completion, reference).parts["format"] == expected
