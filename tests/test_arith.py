import pytest

from credo.data import Example
from credo.envs.arith import ArithConfig, ArithEnv, evaluate, expression, make_problem, pad_to_width, trace
from credo.envs.verifiers.answer_tag import extract_answer, verify_integer


@pytest.mark.parametrize(
    "completion,reference,value,fmt",
    [
        ("first 2+3=5\ncheck: done\n<answer>5</answer>", 5, 1.0, 1.0),
        ("<answer> 5 </answer>", 5, 1.0, 1.0),
        ("<answer>6</answer>", 5, 0.0, 1.0),
        ("<answer>4</answer> then <answer>5</answer>", 5, 1.0, 1.0),  # last tag wins
        ("<answer>5</answer> then <answer>4</answer>", 5, 0.0, 1.0),
        ("the answer is 5", 5, 0.0, 0.0),
        ("<answer>5", 5, 0.0, 0.0),
        ("<answer>five</answer>", 5, 0.0, 0.0),
        ("<answer>5.0</answer>", 5, 0.0, 0.0),
        ("<answer>-3</answer>", -3, 1.0, 1.0),
        ("", 0, 0.0, 0.0),
        ("<answer>" * 5000 + "7</answer>", 7, 1.0, 1.0),
    ],
)
def test_verifier_table(completion, reference, value, fmt):
    s = verify_integer(completion, reference)
    assert (s.value, s.parts["format"]) == (value, fmt)


def test_verifier_is_total_on_garbage_reference():
    assert verify_integer("<answer>1</answer>", "not a number").value == 0.0
    assert extract_answer("x" * 100_000) is None


def test_problems_stay_in_range_and_traces_are_correct():
    import random

    rng = random.Random(0)
    for depth in (1, 3, 5):
        for _ in range(200):
            steps = make_problem(rng, depth, operand_max=9, value_max=99)
            values = evaluate(steps)
            assert len(steps) == depth + 1 and all(0 <= v <= 99 for v in values)
            t = trace(steps)
            assert t.startswith("first ") and t.count("\n") == depth + 1
            assert verify_integer(t, values[-1]).value == 1.0


def test_chains_are_padded_with_identity_ops():
    import random

    rng = random.Random(1)
    steps = [("", 7), ("*", 7), ("-", 4)]
    padded = pad_to_width(rng, steps, 5)
    assert len(padded) == 6 and padded[0] == ("", 7)
    assert [s for s in padded if s != ("+", 0)] == steps  # order of the real operations kept
    assert evaluate(padded)[-1] == evaluate(steps)[-1] == 45
    assert expression(steps) == "7*7-4"


def test_every_prompt_has_the_same_width():
    env = ArithEnv(ArithConfig(n_sft=300, n_train=50, n_test=20, width=5))
    for ex in env.examples("sft") + env.examples("test"):
        steps = ex.meta["steps"]
        assert len(steps) == 6
        assert sum(s != ("+", 0) for s in steps[1:]) == ex.meta["depth"]


def test_splits_are_seeded_disjoint_and_at_the_right_depths():
    env = ArithEnv(ArithConfig(n_sft=500, n_train=300, n_test=50, seed=3))
    test = {e.prompt for e in env.examples("test")}
    assert len(test) == 50
    assert not test & {e.prompt for e in env.examples("train")}
    assert not test & {e.prompt for e in env.examples("sft")}
    assert {e.meta["depth"] for e in env.examples("sft")} == {1, 2, 3}
    assert {e.meta["depth"] for e in env.examples("test")} == {4}
    again = ArithEnv(ArithConfig(n_sft=500, n_train=300, n_test=50, seed=3))
    assert [e.prompt for e in again.examples("train")] == [e.prompt for e in env.examples("train")]
    other = ArithEnv(ArithConfig(n_sft=500, n_train=300, n_test=50, seed=4))
    assert [e.prompt for e in other.examples("test")] != [e.prompt for e in env.examples("test")]


def test_reference_completion_verifies():
    env = ArithEnv(ArithConfig(n_sft=50, n_train=50, n_test=20))
    for ex in env.examples("test"):
        assert isinstance(ex, Example)
        assert env.verify(env.reference_completion(ex), ex).value == 1.0
    with pytest.raises(ValueError, match="unknown split"):
        env.examples("validation")


def test_direct_frac_mixes_direct_answers_into_the_warm_start_only():
    mixed = ArithEnv(ArithConfig(n_sft=400, n_train=50, n_test=20, direct_frac=0.5))
    worked = ArithEnv(ArithConfig(n_sft=400, n_train=50, n_test=20, direct_frac=0.0))
    sft = mixed.examples("sft")
    direct = [e for e in sft if mixed.reference_completion(e).startswith("<answer>")]
    assert 0.4 < len(direct) / len(sft) < 0.6
    for e in direct:
        assert mixed.reference_completion(e) == f"<answer>{e.reference}</answer>"
        assert verify_integer(mixed.reference_completion(e), e.reference).value == 1.0
    assert [e.prompt for e in sft] == [e.prompt for e in worked.examples("sft")]  # same problems either way
    assert not any(worked.reference_completion(e).startswith("<answer>") for e in worked.examples("sft"))
    for split in ("train", "test"):
        assert not any(e.meta["direct"] for e in mixed.examples(split))


def test_arith_options_are_checked():
    from credo.envs.arith import from_config
    from credo.trainer.config import EnvConfig

    assert from_config(EnvConfig()).cfg.direct_frac == ArithConfig().direct_frac
    assert from_config(EnvConfig(options={"direct_frac": 0})).cfg.direct_frac == 0.0
    with pytest.raises(ValueError, match="unknown env.options"):
        from_config(EnvConfig(options={"direct": 0.5}))
    with pytest.raises(ValueError, match="direct_frac must be in"):
        from_config(EnvConfig(options={"direct_frac": 1.5}))
