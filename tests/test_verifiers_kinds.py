"""Issue 12, verifier side: each kind's reported case with its right value, the verdict contract (status,
`correct`, format credit) in every verifier and in the reasoning-gym and dataset environments, and speed on
adversarial inputs. The table of cases is `test_verifier_table.py`."""

import math
import time

import pytest

from credo.envs.verifiers import call_verifier, get_verifier
from credo.envs.verifiers.answer_tag import verify_integer
from credo.envs.verifiers.choice import verify_choice
from credo.envs.verifiers.math import verify_math
from credo.envs.verifiers.normalize import close
from credo.envs.verifiers.numeric import verify_numeric

PAD = "Let me double-check this once more, step by step. " * 216  # 10,800 characters, no digit
NAMES = ["integer", "math", "numeric", "mcq", "typed", "number_list"]


def test_kind1_fragments_of_the_reference_are_not_accepted():
    assert verify_math("<answer>2</answer>", "2\\sqrt{3}").value == 0.0
    assert verify_math("<answer>4*sqrt(2)</answer>", "4").value == 0.0
    assert verify_math("<answer>a+b=10</answer>", "a-b=10").value == 0.0
    assert verify_math("<answer>2 2/3</answer>", "2").value == 0.0
    assert verify_math("<answer>2 2/3</answer>", "8/3").value == 1.0  # the mixed number is read whole


def test_kind2_tiny_values_are_not_all_equal():
    assert verify_math("<answer>\\frac{1}{2^{98}}</answer>", "\\frac{1}{2^{99}}").value == 0.0
    assert verify_numeric("<answer>1e-7</answer>", 2e-7).value == 0.0
    assert verify_numeric("<answer>1e-7</answer>", 1e-7).value == 1.0


def test_close_is_relative_and_exact_for_integers():
    from fractions import Fraction as F

    assert close(F(1000001, 1000000), F(1))  # 1e-6 relative: on the bound
    assert not close(F(1000002, 1000000), F(1))
    assert not close(F(10**7 + 1), F(10**7))  # integers exactly
    assert close(F(1, 10**13), F(0)) and not close(F(1, 10**11), F(0))  # absolute 1e-12 against zero only
    assert not close(F(0), F(1, 10**13))  # ... and not when the answer is the zero


@pytest.mark.parametrize("name", ["integer", "math", "numeric", "typed"])
def test_kind3_answer_followed_by_long_text_is_found(name):
    completion = "<answer>42</answer>" + PAD
    assert len(completion) > 10_800
    assert get_verifier(name)(completion, 42).value == 1.0


def test_kind3_mcq_and_boxes_too():
    assert verify_choice("<answer>C</answer>" + PAD, "C").value == 1.0
    assert verify_math("\\boxed{42}" + PAD, "42").value == 1.0


def test_kind8_latex_thousands_separators():
    assert verify_numeric("<answer>10,\\!000</answer>", 10000).value == 1.0
    assert verify_math("<answer>1\\,000</answer>", 1000).value == 1.0
    assert verify_integer("<answer>10,\\!000</answer>", 10000).value == 1.0


def test_kind9_unit_exponents_are_not_the_answer():
    assert verify_numeric("<answer>5 \\text{ m}^2</answer>", 5).value == 1.0
    assert verify_numeric("<answer>5 \\text{ m}^2</answer>", 2).value == 0.0


# kind 6: no verdict is "unscorable" with a reason, never a 0 that would be trained on
UNREADABLE_REFERENCES = [
    ("integer", "not a number"), ("integer", None), ("integer", 2.5),
    ("math", None), ("math", float("nan")), ("math", "\\frac{1}{"), ("math", []),
    ("numeric", None), ("numeric", float("nan")), ("numeric", "1 and 2"), ("numeric", "no number"), ("numeric", True),
    ("mcq", None), ("mcq", "Paris"),
    ("typed", None), ("typed", float("nan")), ("typed", "  "),
    ("number_list", None), ("number_list", True), ("number_list", float("nan")), ("number_list", "[1, two]"),
    ("number_list", "[]"),
]


@pytest.mark.parametrize(("name", "reference"), UNREADABLE_REFERENCES)
def test_kind6_unreadable_reference_is_unscorable(name, reference):
    s = get_verifier(name)("<answer>1</answer>", reference)
    assert (s.status, s.value, s.correct) == ("unscorable", 0.0, False)
    assert s.reason


def test_kind6_a_word_reference_is_scored_not_unscorable():
    assert verify_math("<answer>Paris</answer>", "Paris").scorable
    assert verify_math("<answer>Rome</answer>", "Paris").value == 0.0


def test_kind6_internal_errors_are_unscorable(monkeypatch):
    import credo.envs.verifiers.math as math_module
    import credo.envs.verifiers.numeric as numeric_module

    def broken(*args, **kwargs):
        raise RuntimeError("sympy broke")

    monkeypatch.setattr(math_module, "parse", broken)
    monkeypatch.setattr(numeric_module, "_normalize", broken)
    for s in (verify_math("<answer>1</answer>", "1"), verify_numeric("<answer>1</answer>", 1)):
        assert s.status == "unscorable" and "RuntimeError: sympy broke" in s.reason


def test_call_verifier_makes_any_verifier_total():
    assert call_verifier(verify_integer, "<answer>3</answer>", 3).value == 1.0
    for bad in (lambda c, r: 1 / 0, lambda c, r: None, lambda c, r: 1.0):
        assert call_verifier(bad, "x", 1, "user").status == "unscorable"


@pytest.mark.parametrize("name", NAMES)
def test_kind10_every_verifier_sets_correct(name):
    right = {"integer": 7, "math": "7", "numeric": 7, "mcq": "C", "typed": 7, "number_list": 7}[name]
    answer = "C" if name == "mcq" else "7"
    good, bad = get_verifier(name)(f"<answer>{answer}</answer>", right), get_verifier(name)("<answer></answer>", right)
    assert (good.correct, good.value, bad.correct, bad.value) == (True, 1.0, False, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_kind12_no_format_credit_for_an_empty_answer(name):
    right = {"integer": 7, "math": "7", "numeric": 7, "mcq": "C", "typed": 7, "number_list": 7}[name]
    assert get_verifier(name)("<answer></answer>", right).parts == {"correct": 0.0, "format": 0.0}
    assert get_verifier(name)("<answer> </answer>", right).parts["format"] == 0.0


ADVERSARIAL = [
    "<answer>" + "2 " * 20_000 + "</answer>", "<answer>" + "\\sqrt{" * 5_000 + "</answer>",
    "<answer>" + "1\\,000" * 3_000 + "</answer>", "<answer>" + "2^" * 10_000 + "</answer>",
    "<answer>9^{9^{9}}</answer>", "<answer>" + "1,000" * 5_000 + "</answer>", "<answer>" + "a " * 20_000 + "</answer>",
    "<answer>2^{99999}</answer>", "<answer>" + "9" * 20_000 + "</answer>", "x" * 1_000_000 + "<answer>1</answer>",
]


@pytest.mark.parametrize("name", NAMES)
def test_fast_on_adversarial_inputs(name):
    verifier = get_verifier(name)
    for completion in ADVERSARIAL:
        t = time.perf_counter()
        s = verifier(completion, "1")
        assert s.value in (0.0, 1.0) and time.perf_counter() - t < 5.0, (name, completion[:40])


# the reasoning-gym environment's own scoring
@pytest.fixture(scope="module")
def chain_sum():
    pytest.importorskip("reasoning_gym")
    from credo.envs.reasoning_gym import ReasoningGymEnv

    env = ReasoningGymEnv("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1}, n_sft=2, n_train=2, n_test=2)
    return env, env.examples("test")[0]


def test_rg_kind12_empty_answer_earns_no_format(chain_sum):
    env, ex = chain_sum
    s = env.verify("<answer></answer>", ex)  # the case: SmolLM2 learned to write this
    assert (s.value, s.parts, s.correct) == (0.0, {"correct": 0.0, "format": 0.0}, False)
    assert env.verify("<answer>no idea</answer>", ex).parts["format"] == 0.0  # not a number
    wrong = int(ex.reference) + 1
    assert env.verify(f"<answer>{wrong}</answer>", ex).parts == {"correct": 0.0, "format": 1.0}


def test_rg_kind3_and_kind10_full_credit_is_correct(chain_sum):
    env, ex = chain_sum
    s = env.verify(f"<answer>{ex.reference}</answer>" + PAD, ex)
    assert (s.value, s.correct, s.parts["format"]) == (1.0, True, 1.0)


class _Scorer:
    def __init__(self, value):
        self.value = value

    def score_answer(self, answer, entry):
        return self.value


def test_rg_kind10_partial_credit_is_reward_not_correct(chain_sum, monkeypatch):
    env, ex = chain_sum
    monkeypatch.setattr(env, "_scorer", _Scorer(0.5))
    s = env.verify("<answer>3</answer>", ex)
    assert (s.value, s.correct, s.status, s.parts) == (0.5, False, "scored", {"correct": 0.5, "format": 1.0})


@pytest.mark.parametrize("value", [None, float("nan"), "not a number"])
def test_rg_kind6_scorer_without_a_verdict_is_unscorable(chain_sum, monkeypatch, value):
    env, ex = chain_sum
    monkeypatch.setattr(env, "_scorer", _Scorer(value))
    s = env.verify("<answer>3</answer>", ex)
    assert (s.status, s.value, s.correct) == ("unscorable", 0.0, False) and env.name in s.reason


def test_rg_credo_verifier_that_raises_is_unscorable(chain_sum, monkeypatch):
    env, ex = chain_sum
    monkeypatch.setattr(env, "_verifier", lambda c, r: math.log(-1))  # ValueError: math domain error
    assert env.verify("<answer>3</answer>", ex).status == "unscorable"


def test_dataset_kind6_verifier_that_raises_is_unscorable(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import datasets

    from credo.envs.dataset import DatasetEnv

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "2+3", "answer": "5"}\n')
    env = DatasetEnv(test_files=[str(path)], verifier="math")
    ex = env.examples("test")[0]
    assert env.verify("<answer>5</answer>", ex).value == 1.0
    monkeypatch.setattr(env, "_verifier", lambda c, r: 1 / 0)
    s = env.verify("<answer>5</answer>", ex)
    assert s.status == "unscorable" and "ZeroDivisionError" in s.reason
