"""The `number_list` verifier (envs/verifiers/number_list.py): lists of numbers, element by element."""

import ast

import pytest

from credo.envs.verifiers.number_list import parse_number_list, verify_number_list

SORTING_REFERENCE = "['-83.0', '-41.0', '-21.0', '5.0', '65.0']"  # reasoning-gym number_sorting's `answer`


@pytest.mark.parametrize(("completion", "correct", "fmt"), [
    ("<answer>[-83, -41, -21, 5, 65]</answer>", 1.0, 1.0),
    ("<answer>['-83.0', '-41.0', '-21.0', '5.0', '65.0']</answer>", 1.0, 1.0),
    ("<answer>-83, -41, -21, 5, 65</answer>", 1.0, 1.0),  # no brackets inside the tag: the whole content
    ("First [65, 5]. Sorted: [-83, -41, -21, 5, 65]", 1.0, 0.0),  # format-free: the last list
    ("Sorted: [-83, -41, -21, 5, 65]. Check: [1, 2]", 0.0, 0.0),  # the last list is the answer
    ("<answer>[-83, -41, -21, 65, 5]</answer>", 0.0, 1.0),  # order counts
    ("<answer>[-83, -41, -21, 5]</answer>", 0.0, 1.0),  # length counts
    ("<answer>[-83, -41, -21, 5, 65.5]</answer>", 0.0, 1.0),  # values within 1e-6 relative, not 1
    ("<answer>[-83, -41, -21, 5, sixty-five]</answer>", 0.0, 0.0),  # an element that is no number: no list
    ("[-83, -41, -21, 5, 65] <answer>[1, 2, 3, 4, 5]</answer>", 0.0, 1.0),  # a tag wins over an untagged list
    ("no list at all", 0.0, 0.0),
])
def test_sorting_answers(completion, correct, fmt):
    s = verify_number_list(completion, SORTING_REFERENCE)
    assert s.scorable and s.parts == {"correct": correct, "format": fmt} and s.correct == bool(correct)


def test_commas_separate_elements_and_references_of_every_form():
    assert [int(x) for x in parse_number_list("[1,234]")] == [1, 234]  # not the thousands number 1234
    assert parse_number_list("[50%, 1]") is None  # a percentage has two readings: not one number
    for ref in ([1, 2.5], ("1", "2.5"), "[1, 2.5]", "1, 2.5"):
        assert verify_number_list("<answer>[1, 2.5]</answer>", ref).value == 1.0


def test_reasoning_gym_scorer_agrees_on_sorting():
    rg = pytest.importorskip("reasoning_gym")
    data = rg.create_dataset("number_sorting", size=20, seed=3, min_numbers=5, max_numbers=6, max_decimals=0)
    for entry in data:
        numbers = [float(x) for x in ast.literal_eval(entry["answer"])]  # a list of numeric strings
        for candidate in (numbers, numbers[::-1], numbers[:-1]):
            text = "[" + ", ".join(f"{x:g}" for x in candidate) + "]"
            ours = verify_number_list(f"<answer>{text}</answer>", entry["answer"]).value
            assert ours == data.score_answer(text, entry), (text, entry["answer"])
