"""MoCA: advantage routing (core), Perception Verification and the reward combination (rewards.perception)."""

import math
from types import SimpleNamespace

import pytest
import torch

from credo.core.credit import CREDIT, NEEDS, PERCEPTION, moca
from credo.data import SEGMENTS, Example, Sample, collate
from credo.envs.base import Score
from credo.envs.verifiers.answer_tag import extract_answer
from credo.models import build_policy
from credo.rewards import verify_samples
from credo.rewards.perception import (
    PolicyReasoner,
    ProgramReasoner,
    combine_rewards,
    extract_perception,
    length_penalty,
    make_reasoner,
    perception_rewards,
    question_text,
)
from credo.rewards.terms import RewardModel, TermContext
from credo.trainer.config import Config, ModelConfig, RewardConfig, RLConfig

P, R, A = SEGMENTS["perception"], SEGMENTS["reasoning"], SEGMENTS["answer"]


def _inputs(seg, failed, ok):
    """The credit inputs MoCA reads (`core.credit.CreditInputs`): segment labels, `correct` = not failed, R_P."""
    return SimpleNamespace(segment_ids=torch.as_tensor(seg), correct=None if failed is None else ~torch.tensor(failed),
                           planning_mask=None, perception_ok=None if ok is None else torch.tensor(ok),
                           step_labels=None)


def _alphas(protect=0.2, punish=0.2):
    return RLConfig(moca_alpha_protect=protect, moca_alpha_punish=punish)


def test_perception_id_matches_data_segments():
    assert PERCEPTION == SEGMENTS["perception"]


def test_moca_hand_cases():
    # rows: failed + R_P = 1, failed + R_P = 0, success + R_P = 1, success + R_P = 0; tokens: P P R A 0(pad)
    seg = torch.tensor([[P, P, R, A, 0]] * 4)
    adv = torch.tensor([[-1.0] * 4 + [0.0], [-1.0] * 4 + [0.0], [0.5] * 4 + [0.0], [0.5] * 4 + [0.0]])
    out = moca(adv, _inputs(seg, [True, True, False, False], [True, False, True, False]), _alphas(0.2, 0.3))
    expected = torch.tensor([
        [-0.8, -0.8, -1.0, -1.0, 0.0],  # bad thinking: −1 + 0.2·1 on perception (less blame)
        [-1.3, -1.3, -1.0, -1.0, 0.0],  # bad seeing: −1 − 0.3·1 on perception (more blame)
        [0.5, 0.5, 0.5, 0.5, 0.0],  # success: unchanged
        [0.5, 0.5, 0.5, 0.5, 0.0],
    ])
    assert torch.allclose(out, expected)
    assert torch.equal(adv[0], torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0]))  # input untouched


def test_moca_positive_advantage_on_failed_rows():
    # a failed trajectory can still have A > 0 (e.g. its group mean is lower after λ·R_P): |A| keeps the direction
    seg = torch.tensor([[P, R], [P, R]])
    adv = torch.tensor([[0.4, 0.4], [0.4, 0.4]])
    out = moca(adv, _inputs(seg, [True, True], [True, False]), _alphas())
    assert torch.allclose(out, torch.tensor([[0.48, 0.4], [0.32, 0.4]]))


def test_moca_non_perception_tokens_and_alpha_zero_unchanged():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(3, 6, generator=g)
    seg = torch.tensor([[R, A, 0, 4, 5, R]] * 3)  # no perception token anywhere
    assert torch.equal(moca(adv, _inputs(seg, [True, True, False], [True, False, False]), _alphas()), adv)
    seg = torch.full((3, 6), P)
    assert torch.equal(moca(adv, _inputs(seg, [True] * 3, [True, False, True]), _alphas(0.0, 0.0)), adv)


def test_moca_matches_loop_reference_and_registry():
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(5, 7, generator=g, dtype=torch.float64)
    seg = torch.randint(0, 6, (5, 7), generator=g)
    failed, ok = torch.rand(5, generator=g) > 0.4, torch.rand(5, generator=g) > 0.5
    out = CREDIT["moca"](adv, _inputs(seg, failed.tolist(), ok.tolist()), _alphas(0.25, 0.15))
    assert out.dtype == torch.float64
    for i in range(5):
        for t in range(7):
            a = float(adv[i, t])
            if failed[i] and seg[i, t] == P:
                a = a + 0.25 * abs(a) if ok[i] else a - 0.15 * abs(a)
            assert math.isclose(float(out[i, t]), a, rel_tol=1e-12)


def test_moca_needs_correct_and_perception_ok_of_shape_b():
    seg = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="correct, which no stage filled"):
        moca(torch.zeros(2, 2), _inputs(seg, None, [True, True]), _alphas())
    with pytest.raises(ValueError, match="perception_ok, which no stage filled"):
        moca(torch.zeros(2, 2), _inputs(seg, [True, True], None), _alphas())
    with pytest.raises(ValueError, match=r"perception_ok \(1,\) must be \(2,\)"):
        moca(torch.zeros(2, 2), _inputs(seg, [True, True], [True]), _alphas())
    assert NEEDS["moca"] == ("correct", "perception_ok")


def test_combine_rewards_and_length_penalty_by_hand():
    r = combine_rewards(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]),
                        torch.tensor([0.0, 0.1, 0.1, 0.0]), lam=0.5)
    assert r.tolist() == pytest.approx([1.5, 0.4, -0.1, 1.0])
    pen = length_penalty(torch.tensor([0.0, 800.0, 801.0]), max_len=800, penalty=0.1)
    assert pen.tolist() == pytest.approx([0.0, 0.0, 0.1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<perception>a red cube</perception><think>so</think><perception> 2 balls </perception>",
         "a red cube\n2 balls"),
        ("<perception>unclosed to the end\nline 2", "unclosed to the end\nline 2"),
        ("<perception>first<perception>second</perception>", "first\nsecond"),  # an open tag ends the block
        ("</perception>stray close<perception>x</perception></perception>", "x"),
        ("<perception></perception><perception>  </perception>", ""),
        ("no tags at all", ""),
        ("", ""),
        ("<perceptio>typo</perceptio>", ""),
    ],
)
def test_extract_perception_malformed(text, expected):
    assert extract_perception(text) == expected


def test_question_text_from_chat_messages():
    ex = Example("q", [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}], 3)
    assert question_text(ex) == "How many?"
    assert question_text(Example("q", "2+2?", 4)) == "2+2?"


class FakeSceneEnv:
    """The reference is the count of balls; the perception names them; `blind_answer` counts "ball"."""

    name = "fake_scene"

    def blind_answer(self, perception: str, example: Example) -> str | None:
        if "boom" in perception:
            raise RuntimeError("solver bug")
        n = perception.count("ball")
        return str(n) if n else None

    def verify(self, completion: str, example: Example) -> Score:
        ans = extract_answer(completion)
        return Score(float(ans == str(example.reference)), {"format": float(ans is not None)})

    def perception_correct(self, perception: str, example: Example) -> bool:
        return perception.count("ball") == example.reference and "wrong" not in perception


def _sample(text: str, outcome: float, ex_id: str = "e0") -> Sample:
    n = len(text)
    return Sample(example_id=ex_id, group_id=0, prompt_ids=torch.zeros(1, dtype=torch.long),
                  completion_ids=torch.zeros(n, dtype=torch.long), loss_mask=torch.ones(n),
                  segment_ids=torch.full((n,), R), sampler_logprobs=torch.zeros(n), finish_reason="stop", text=text,
                  verdict=Score(outcome))


def test_perception_rewards_program_reasoner_and_combination():
    env = FakeSceneEnv()
    by_id = {"e0": Example("e0", "How many balls?", 2)}
    long = "ball ball " + "x" * 30
    samples = [
        _sample("<perception>ball, ball</perception><answer>2</answer>", 1.0),  # R_P 1, right
        _sample("<perception>ball ball wrong colour</perception><answer>3</answer>", 0.0),  # R_P 1, truth: wrong
        _sample("<perception>one ball</perception><answer>1</answer>", 0.0),  # R_P 0 (bad seeing)
        _sample("<answer>2</answer>", 1.0),  # no perception: R_P 0 without asking
        _sample("<perception>boom</perception>", 0.0),  # the solver raises: R_P 0, counted
        _sample(f"<perception>{long}", 0.0),  # unclosed, over the length cap: R_P 1, penalised
    ]
    cfg = RewardConfig(perception=0.5, perception_max_len=30, perception_len_penalty=0.1)
    r_p, m = perception_rewards(samples, by_id, env, make_reasoner("program", env), cfg)
    assert r_p.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert m["pv/rate"] == pytest.approx(3 / 6)
    assert m["pv/agreement"] == pytest.approx(5 / 6)  # all agree except sample 1 (R_P 1, perception wrong)
    assert m["pv/length_penalized"] == pytest.approx(1 / 6)
    assert m["pv/empty"] == pytest.approx(1 / 6)
    assert m["pv/errors"] == 1.0

    # the same through the reward terms: verdicts (env.verify, inline), then outcome + λ·perception + length
    for s in samples:
        s.verdict = None
    verify_samples(samples, by_id, env)
    run_cfg = Config(reward=cfg)
    terms = RewardModel({"outcome": 1.0, "perception": 0.5, "perception_length": 1.0},
                        TermContext(cfg=run_cfg, env=env, reasoner=ProgramReasoner(env)))
    m = terms(samples, list(by_id.values()))
    # R = R_O + 0.5·R_P − 0.1·1[len > 30]: the outcomes are 1, 0, 0, 1, 0, 0 (env.verify)
    assert [s.reward for s in samples] == pytest.approx([1.5, 0.5, 0.0, 1.0, 0.0, 0.4])
    assert [s.reward_parts["perception"] for s in samples] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert [s.reward_parts["perception_length"] for s in samples] == pytest.approx([0.0] * 5 + [-0.1])
    assert m["reward/mean"] == pytest.approx(3.4 / 6) and m["reward/perception"] == pytest.approx(0.5)
    assert m["pv/errors"] == 1.0 and m["reward/unscorable"] == 0.0

    # MoCA's credit inputs come with the batch: `correct` from the verdicts, R_P from the perception term
    batch = collate(samples, pad_id=0)
    assert (~batch.correct).tolist() == [False, True, True, False, True, True]  # failed
    assert batch.perception_ok.tolist() == [True, True, False, False, False, True]


def test_perception_term_needs_a_reasoner_and_program_needs_env_solver():
    with pytest.raises(ValueError, match="blindfolded reasoner"):
        RewardModel({"perception": 0.5}, TermContext(cfg=Config(), env=FakeSceneEnv()))
    assert collate([_sample("x", 0.0)], pad_id=0).perception_ok is None  # no PV: MoCA's input is missing
    with pytest.raises(ValueError, match="blind_answer"):
        make_reasoner("program", object())
    with pytest.raises(ValueError, match="unknown value"):
        make_reasoner("oracle", FakeSceneEnv())


def test_policy_reasoner_plumbing_on_tiny_lm():
    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=256))
    policy.train()
    reasoner = make_reasoner("policy", FakeSceneEnv(), policy, tok, max_new_tokens=8)
    assert isinstance(reasoner, PolicyReasoner) and reasoner.max_prompt_tokens == 248
    ex = Example("e0", "How many balls?", 2)
    out = reasoner.answer("How many balls?", "two red balls " * 40, ex)  # prompt over the cap: clipped, no error
    assert out is None or isinstance(out, str)
    assert policy.training  # the train/eval flag is restored
    outs = reasoner.answers(["q1", "q2"], ["ball", "x" * 500])
    assert len(outs) == 2 and all(o is None or isinstance(o, str) for o in outs)
    a, b = reasoner.answers(["q"], ["ball"]), reasoner.answers(["q"], ["ball"])
    assert a == b  # greedy: deterministic
    samples = [_sample("<perception>two balls</perception>", 0.0), _sample("none", 1.0)]
    r_p, m = perception_rewards(samples, {"e0": ex}, FakeSceneEnv(), reasoner, RewardConfig(), tok)
    assert r_p.shape == (2,) and r_p[1] == 0.0 and m["pv/errors"] == 0.0


def test_config_defaults():
    r, rl = RewardConfig(), RLConfig()
    assert (r.perception, r.perception_reasoner, r.perception_max_len, r.perception_len_penalty) == (
        0.0, "program", 800, 0.1)
    assert (rl.moca_alpha_protect, rl.moca_alpha_punish) == (0.2, 0.2)


def test_pv_agreement_against_exact_and_sufficient_truth_on_scenes():
    from credo.envs.scenes import ScenesConfig, ScenesEnv
    from credo.envs.scenes.claims import format_claims
    from credo.envs.scenes.scene import SceneObject

    env = ScenesEnv(ScenesConfig(n_sft=1, n_train=1, n_test=40, families=("count",)))
    samples, by_id, exact, sufficient = [], {}, [], []
    for ex in env.examples("test"):
        objs = list(ex.meta["objects"])
        free = next((r, c) for r in (1, 2, 3) for c in (1, 2, 3) if all((o.row, o.col) != (r, c) for o in objs))
        extra = SceneObject(*free, "circle", "red", "large")  # an extra claim: never exact, sometimes sufficient
        for claims in (objs, [*objs, extra], objs[1:]):
            by_id[ex.id] = ex
            samples.append(_sample(f"<perception>{format_claims(claims)}</perception><answer>0</answer>", 0.0, ex.id))
            exact.append(sorted(claims) == sorted(objs))
            sufficient.append(env.perception_sufficient(format_claims(claims), ex))
    r_p, m = perception_rewards(samples, by_id, env, make_reasoner("program", env), RewardConfig(perception=0.5))
    # the program reasoner is the exact solver: R_P = 1 exactly when the claims determine the right answer
    assert r_p.tolist() == [float(s) for s in sufficient]
    assert m["pv/agreement_sufficient"] == 1.0
    want = sum(e == s for e, s in zip(exact, sufficient, strict=True)) / len(samples)
    assert m["pv/agreement"] == pytest.approx(want) and want < 1.0  # irrelevant extras / misses diverge
