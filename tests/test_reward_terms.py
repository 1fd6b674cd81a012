"""Reward terms (`rewards.terms`, issue 13; issue 12 kinds 6 and 11): the reward is the weighted sum of every enabled
term, no term is dropped, a term without a value makes its sample unscorable (counted), and a user function with
TRL's batched signature is a term used unchanged."""

import logging
import math

import pytest
import reward_helpers as rh
import torch

from credo.data import Example, Sample, Score
from credo.envs.functions import is_batched_function
from credo.rewards.perception import ProgramReasoner
from credo.rewards.terms import TERMS, RewardModel, TermContext, TermResult, term_weights
from credo.trainer.config import Config


def _sample(text: str, verdict: Score | None, ex_id: str = "e0", group: int = 0, n_tokens: int = 3,
            finish: str = "stop") -> Sample:
    return Sample(example_id=ex_id, group_id=group, prompt_ids=torch.tensor([1]),
                  completion_ids=torch.arange(n_tokens), loss_mask=torch.ones(n_tokens),
                  segment_ids=torch.ones(n_tokens, dtype=torch.long), sampler_logprobs=torch.zeros(n_tokens),
                  finish_reason=finish, text=text, verdict=verdict)


class BallsEnv:
    """The reference is a count of balls; `blind_answer` counts "ball" in the perception (MoCA's program
    reasoner); `render_prompt` is the prompt a TRL function receives."""

    name = "balls"

    def verify(self, completion: str, example: Example) -> Score:
        return Score(float(rh.answer_of(completion) == str(example.reference)), {"format": 1.0})

    def blind_answer(self, perception: str, example: Example) -> str | None:
        n = perception.count("ball")
        return str(n) if n else None

    def render_prompt(self, example: Example) -> str:
        return f"Q: {example.prompt}\n"


# ---- the weighted sum -------------------------------------------------------------------------------------


def test_weighted_sum_over_terms_by_hand():
    # verdicts: right (1, format 1), partial credit (0.5, format 1), wrong (0, format 0); lengths 3, 7, 8
    samples = [_sample("a", Score(1.0, {"format": 1.0}), n_tokens=3),
               _sample("b", Score(0.5, {"format": 1.0}), n_tokens=7),
               _sample("c", Score(0.0, {"format": 0.0}), n_tokens=8)]
    cfg = Config()
    cfg.reward.format = 0.5
    cfg.rl.max_new_tokens, cfg.rl.overlong_cache = 8, 2  # overlong: free up to 6, then −0.5 per token
    weights = term_weights(cfg)
    assert weights == {"outcome": 1.0, "format": 0.5, "overlong": 1.0}
    m = RewardModel(weights, TermContext(cfg=cfg, env=None))(samples, [])
    # R = 1·outcome + 0.5·format + 1·overlong: 1 + 0.5 + 0 | 0.5 + 0.5 − 0.5 | 0 + 0 − 1
    assert [s.reward for s in samples] == pytest.approx([1.5, 0.5, -1.0])
    assert samples[1].reward_parts == {"outcome": 0.5, "format": 1.0, "overlong": -0.5, "verifier/format": 1.0}
    assert m["reward/outcome"] == pytest.approx(0.5) and m["reward/format"] == pytest.approx(2 / 3)
    assert m["reward/overlong"] == pytest.approx(-0.5) and m["reward/mean"] == pytest.approx(1.0 / 3)
    assert m["reward/unscorable"] == 0.0


def test_zero_weights_are_off_and_unknown_terms_are_an_error():
    cfg = Config()
    assert term_weights(cfg) == {"outcome": 1.0}  # the default run: the verifier's outcome only
    cfg.reward.outcome = 0.0
    assert term_weights(cfg) == {}
    with pytest.raises(ValueError, match="unknown reward term"):
        RewardModel({"outcome": 1.0, "oracle": 1.0}, TermContext(cfg=cfg, env=None))


def test_kind11_rethink_shaping_and_perception_both_reach_the_total():
    """Issue 12, kind 11: with rethink shaping on, the perception reward (and any other term) is not lost."""
    env = BallsEnv()
    ex = Example("e0", "How many balls?", 2)
    samples = [
        _sample("Wait, I see <perception>ball ball</perception><answer>2</answer>", None),  # right, 1 wait: 1.1
        _sample("<perception>ball ball</perception><answer>3</answer>", None),  # wrong, R_P = 1
        _sample("<perception>ball</perception><answer>2</answer>", None),  # right, no wait, R_P = 0
    ]
    for s in samples:
        s.verdict = env.verify(s.text, ex)
    cfg = Config()
    cfg.rethink.enabled, cfg.rethink.reward_shaping, cfg.reward.perception = True, True, 0.5
    weights = term_weights(cfg)
    assert weights == {"outcome": 1.0, "perception": 0.5, "perception_length": 1.0, "rethink_shaping": 1.0}
    m = RewardModel(weights, TermContext(cfg=cfg, env=env, reasoner=ProgramReasoner(env)))(samples, [ex])
    # R = R_O + (rethink_reward − R_O) + 0.5·R_P: 1.1 + 0.5 | 0 + 0.5 | 1.0 + 0  (the release would give 1.1, 0, 1)
    assert [s.reward for s in samples] == pytest.approx([1.6, 0.5, 1.0])
    assert [s.reward_parts["rethink_shaping"] for s in samples] == pytest.approx([0.1, 0.0, 0.0])
    assert [s.reward_parts["perception"] for s in samples] == [1.0, 1.0, 0.0]
    assert m["reward/mean"] == pytest.approx(3.1 / 3) and m["reward/rethink_bonus"] == pytest.approx(1 / 3)


# ---- no value: unscorable, counted ------------------------------------------------------------------------


class HalfOrNaN:
    """A probe term: 0.5 per sample, NaN (no value) on a sample whose text is "no value"."""

    def __init__(self, ctx: TermContext) -> None:
        pass

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        return TermResult(torch.tensor([math.nan if s.text == "no value" else 0.5 for s in samples]))


class WrongShape:
    def __init__(self, ctx: TermContext) -> None:
        pass

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        return TermResult(torch.zeros(len(samples) + 1))


def test_a_nan_term_makes_its_sample_unscorable_and_is_counted(monkeypatch):
    monkeypatch.setitem(TERMS, "probe", HalfOrNaN)
    samples = [_sample("fine", Score(1.0)), _sample("no value", Score(1.0)), _sample("fine", Score(0.0)),
               _sample("fine", Score.unscorable("reference unreadable"))]
    m = RewardModel({"outcome": 1.0, "probe": 2.0}, TermContext(cfg=None, env=None))(samples, [])
    assert samples[0].reward == 2.0 and samples[2].reward == 1.0  # 1 + 2·0.5, 0 + 2·0.5
    assert math.isnan(samples[1].reward) and math.isnan(samples[3].reward)  # never trained as a 0
    assert [s.scorable for s in samples] == [True, False, True, False]
    assert m["reward/unscorable"] == 2.0
    # means over the scorable samples only
    assert m["reward/mean"] == pytest.approx(1.5) and m["reward/outcome"] == pytest.approx(0.5)
    assert m["reward/probe"] == pytest.approx(0.5)


def test_a_term_of_the_wrong_shape_is_an_error(monkeypatch):
    monkeypatch.setitem(TERMS, "wrong", WrongShape)
    with pytest.raises(ValueError, match=r"'wrong' returned shape \(3,\), expected \(2,\)"):
        RewardModel({"wrong": 1.0}, TermContext(cfg=None, env=None))([_sample("a", None)] * 2, [])


# ---- a TRL-signature user function ------------------------------------------------------------------------


def _trl_setup(path: str, weight: float = 0.5):
    env = BallsEnv()
    examples = [Example("e0", "2 balls?", 2, meta={"unit": "balls"}), Example("e1", "3 cm?", 3, meta={"unit": "cm"})]
    cfg = Config()
    cfg.reward.function, cfg.reward.function_weight = path, weight
    assert is_batched_function(path)
    weights = term_weights(cfg, trl_function=True)
    assert weights == {"outcome": 1.0, "function": weight}
    return env, examples, RewardModel(weights, TermContext(cfg=cfg, env=env))


def test_trl_function_is_called_unchanged_with_dataset_columns():
    env, examples, model = _trl_setup("reward_helpers:trl_reward")
    samples = [_sample("it is 2 balls <answer>2</answer>", None, "e0"), _sample("<answer>3</answer>", None, "e1"),
               _sample("skip", None, "e1")]
    for s in samples:
        s.verdict = env.verify(s.text, examples[int(s.example_id[1])])
    rh.CALLS.clear()
    m = model(samples, examples)
    (call,) = rh.CALLS  # one call per batch, in this process
    assert call["prompts"] == ["Q: 2 balls?\n", "Q: 3 cm?\n", "Q: 3 cm?\n"]  # env.render_prompt
    assert call["completions"] == [s.text for s in samples]
    assert call["completion_ids"] == [[0, 1, 2]] * 3
    assert call["reference"] == [2, 3, 3] and call["unit"] == ["balls", "cm", "cm"]  # Example.meta columns
    # R = outcome + 0.5·fn: 1 + 0.5·1 | 1 + 0.5·0.25 | None → unscorable
    assert samples[0].reward == 1.5 and samples[1].reward == 1.125 and math.isnan(samples[2].reward)
    assert [s.scorable for s in samples] == [True, True, False]
    assert m["reward/unscorable"] == 1.0 and m["reward/function_errors"] == 0.0
    assert m["reward/function"] == pytest.approx((1.0 + 0.25) / 2)


@pytest.mark.parametrize("path", ["reward_helpers:trl_raises", "reward_helpers:trl_short"])
def test_a_failing_trl_function_makes_the_batch_unscorable_and_is_counted(path, caplog):
    env, examples, model = _trl_setup(path)
    samples = [_sample("<answer>2</answer>", Score(1.0), "e0"), _sample("<answer>3</answer>", Score(1.0), "e1")]
    with caplog.at_level(logging.WARNING, logger="credo.rewards.terms"):
        m = model(samples, examples)  # raises / returns one value for two completions: never stops the run
        model(samples, examples)
    assert all(math.isnan(s.reward) and not s.scorable for s in samples)
    assert m["reward/function_errors"] == 1.0 and m["reward/unscorable"] == 2.0
    (rec,) = caplog.records  # the first error is shown with its message, the second only counted
    msg = rec.getMessage()
    assert path in msg and ("returned 1 values" in msg or "user reward bug" in msg)


def test_per_item_functions_are_not_batched():
    assert not is_batched_function("reward_helpers:marked")  # fn(completion, example): the verifier's runner


class _BrokenVerifierEnv(BallsEnv):
    def verify(self, completion: str, example: Example) -> Score:
        raise ZeroDivisionError(f"verifier bug on {completion!r}")


def test_verifier_errors_are_counted_and_the_first_ones_logged_with_their_message(monkeypatch, caplog):
    import credo.rewards as rewards

    monkeypatch.setattr(rewards, "_logged_failures", 0)
    examples = {"e0": Example("e0", "2 balls?", 2)}
    samples = [_sample(f"<answer>{i}</answer>", None) for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="credo.rewards"):
        m = rewards.verify_samples(samples, examples, _BrokenVerifierEnv())
    assert m["verify/errors"] == 5.0 and m["verify/unscorable"] == 5.0
    assert not any(s.verdict.scorable for s in samples)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == rewards.MAX_LOGGED_FAILURES == 3  # the rest only counted
    assert "ZeroDivisionError: verifier bug on '<answer>0</answer>'" in msgs[0] and "verify/errors" in msgs[0]
    assert "later ones are only counted" in msgs[-1]


def test_trl_shaped_functions_are_batched_and_get_a_dataset_row_s_columns_by_name():
    assert is_batched_function("reward_helpers:trl_reward_len")  # fn(completions, **kwargs), TRL's quick start
    assert not is_batched_function("reward_helpers:marked")
    env = BallsEnv()
    examples = [Example("e0", "2 balls?", 2, meta={"row": {"question": "2 balls?", "final": 2}, "source": "f: 1"})]
    samples = [_sample("it is 2", Score(1.0), "e0"), _sample("no" * 12, Score(0.0), "e0")]
    for path, expected in (("reward_helpers:trl_reward_len", [-13.0, -4.0]), ("reward_helpers:trl_column", [1.0, 0.0])):
        cfg = Config()
        cfg.reward.function, cfg.reward.outcome = path, 0.0
        model = RewardModel(term_weights(cfg, trl_function=True), TermContext(cfg=cfg, env=env))
        m = model(samples, examples)
        assert m["reward/function_errors"] == 0.0
        assert [s.reward for s in samples] == expected
