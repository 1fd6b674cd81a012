"""Issue 12, kind 10: one definition of "this sample is correct": the verdict's `Score.correct`, set by the verifier
(default: full credit, value >= 1). Partial credit (reasoning-gym's 0.5, `Score(0.5, correct=False)`) stays in the
reward value and is not correct for any consumer: MoCA's routing (`Batch.correct`), first_error's failed samples,
HICRA's strategic grams (mined on correct rollouts only), Forced Rethinking's checks and evaluation accuracy. Each
consumer reads the field, not a threshold of its own: a verifier that calls a 0.5 answer correct is followed too.
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from credo.core.credit import CREDIT
from credo.data import SEGMENTS, Example, Sample, Score, collate
from credo.envs.arith import ArithConfig, ArithEnv
from credo.models import build_policy
from credo.models.tokenizer import CharTokenizer
from credo.rewards.steps import fill_step_labels
from credo.trainer import stages
from credo.trainer.config import Config, ModelConfig, RethinkConfig, RLConfig

PARTIAL = Score(0.5, {"correct": 0.5, "format": 1.0}, correct=False)  # reasoning-gym: correct = (score == 1.0)
PARTIAL_BUT_CORRECT = Score(0.5, {"format": 1.0}, correct=True)  # a verifier whose own definition says correct
TOK = CharTokenizer()


def _sample(text: str, verdict: Score | None, segment: str = "reasoning", group: int = 0) -> Sample:
    ids = torch.tensor(TOK.encode(text))
    C = len(ids)
    return Sample(example_id="c", group_id=group, prompt_ids=torch.tensor(TOK.encode_prompt("q")), completion_ids=ids,
                  loss_mask=torch.ones(C), segment_ids=torch.full((C,), SEGMENTS[segment]),
                  sampler_logprobs=torch.zeros(C), finish_reason="stop", text=text, verdict=verdict)


@pytest.mark.parametrize(("verdict", "correct"), [
    (Score(1.0), True), (Score(0.5), False), (PARTIAL, False), (Score(0.99), False), (PARTIAL_BUT_CORRECT, True),
    (Score.unscorable("timeout"), False), (None, False),  # no verdict yet
])
def test_sample_and_batch_read_the_verdict(verdict, correct):
    s = _sample("x", verdict)
    assert s.correct is correct
    assert collate([s], TOK.pad_id).correct.tolist() == [correct]


def test_moca_treats_partial_credit_as_failed():
    # every row: perception tokens, R_P = 1, A = −1; the partial-credit row is a failure ("bad thinking": its
    # perception is protected, −1 + 0.2); the correct rows keep −1 (a correct row is never routed)
    samples = [_sample("ab", PARTIAL, "perception"), _sample("ab", Score(1.0), "perception"),
               _sample("ab", PARTIAL_BUT_CORRECT, "perception")]
    for s in samples:
        s.perception_ok = True
    batch = collate(samples, TOK.pad_id)
    assert batch.correct.tolist() == [False, True, True]
    out = CREDIT["moca"](-batch.loss_mask, batch, RLConfig(moca_alpha_protect=0.2, moca_alpha_punish=0.2))
    P = len(samples[0].prompt_ids)
    assert torch.allclose(out[:, P:], torch.tensor([[-0.8, -0.8], [-1.0, -1.0], [-1.0, -1.0]]))


CHAIN = Example(id="c", prompt="7+0*7-4", reference=45, meta={"steps": [("", 7), ("+", 0), ("*", 7), ("-", 4)]})
REF = "first 7+0=7\nthen 7*7=49\nthen 49-4=45\ncheck: done\n<answer>45</answer>"
SLIP = "first 7+0=7\nthen 7*7=48\nthen 48-4=44\ncheck: done\n<answer>44</answer>"


@pytest.mark.parametrize(("verdict", "located"), [(PARTIAL, 1.0), (PARTIAL_BUT_CORRECT, 0.0)])
def test_first_error_counts_partial_credit_as_failed(verdict, located):
    samples = [_sample(REF, Score(1.0)), _sample(SLIP, verdict)]
    batch = collate(samples, TOK.pad_id)
    m = fill_step_labels(batch, samples, {"c": CHAIN}, ArithEnv(), TOK)
    # the slip's wrong step is located either way; it counts among the failed samples only when not correct
    assert m["credit/located"] == located
    assert m["credit/wrong_step_tokens"] == (12.0 if located else 0.0)  # "then 7*7=48\n"


def test_hicra_mines_strategic_grams_on_correct_rollouts_only():
    cfg = Config()
    cfg.rl.credit, cfg.rl.hicra_refresh = "hicra", 1
    unused = {f.name: None for f in dataclasses.fields(stages.StepContext)}
    ctx = stages.StepContext(**{**unused, "cfg": cfg, "env": SimpleNamespace(name="test"), "tokenizer": TOK,
                                "providers": {}})
    provider = stages.make_providers(ctx)["planning_mask"]
    samples = [_sample("right answer", Score(1.0)), _sample("partial answer", PARTIAL),
               _sample("partial but right", PARTIAL_BUT_CORRECT), _sample("half", Score(0.5)),
               _sample("lost", Score.unscorable("verifier crashed")), _sample("unscored", None)]
    provider.fill(collate(samples, TOK.pad_id), samples, 0)
    assert list(provider.grams.docs) == ["right answer", "partial but right"]


class FixedVerdictArith(ArithEnv):
    """Arith whose verifier returns one fixed verdict for every completion."""

    def __init__(self, verdict: Score) -> None:
        super().__init__(ArithConfig(n_train=16, n_test=4, n_sft=4))
        self.verdict = verdict

    def verify(self, completion: str, example: Example) -> Score:
        return self.verdict


def _tiny_policy():
    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=128))
    return policy.eval(), tok


@pytest.mark.parametrize(("verdict", "acc"), [(PARTIAL, 0.0), (Score(0.5), 0.0), (PARTIAL_BUT_CORRECT, 1.0),
                                              (Score(1.0), 1.0)])
def test_evaluation_accuracy_reads_correct(verdict, acc):
    from credo.trainer.evaluate import evaluate

    policy, tok = _tiny_policy()
    env = FixedVerdictArith(verdict)
    m = evaluate(policy, tok, env, env.examples("test")[:2], max_new_tokens=4, n_samples=2, pass_k=[1, 2],
                 temperature=1.0, seed=0, workers=0)
    assert m["eval/greedy_acc"] == acc and m["eval/pass@1"] == acc and m["eval/pass@2"] == acc
    assert m["eval/maj@2"] == acc


@pytest.mark.parametrize(("verdict", "acc"), [(PARTIAL, 0.0), (PARTIAL_BUT_CORRECT, 1.0)])
def test_forced_rethinking_reads_correct(verdict, acc):
    """Departure from the release (which accepts a rethink at verifier value >= 0.5): credo reads `correct`."""
    from credo.rollout.engine import rollout
    from credo.rollout.rethink import forced_rethink
    from credo.rollout.sampler import SamplingParams

    policy, tok = _tiny_policy()
    tok.eos_ids = [tok.eos_id, *tok.encode("0123456789")]  # finished rollouts from an untrained model
    env = FixedVerdictArith(verdict)
    examples = env.examples("train")[:2]
    params = SamplingParams(max_new_tokens=48, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    samples = rollout(policy, tok, env, examples, 2, params, g)
    cfg = RethinkConfig(enabled=True, skip_prob=0.0, reserve_tokens=16, min_continuation=0, require_correct=True,
                        max_per_prompt=4)
    new, m = forced_rethink(policy, tok, env, samples, {e.id: e for e in examples}, cfg, params, g)
    assert m["rethink/rate"] > 0, m
    assert m["rethink/acc_before"] == acc and m["rethink/acc_after"] == acc
    # require_correct: a partial-credit continuation is never accepted; a correct one is never dropped as incorrect
    if acc:
        assert "rethink/drop_incorrect" not in m
    else:
        assert m["rethink/accepted"] == 0.0 and all(s is t for s, t in zip(new, samples, strict=True))
