"""Issue 12, kind 6: a sample whose verifier raises, times out, or returns None/NaN is unscorable: counted
(`verify/errors`, `verify/timeouts`, `verify/unscorable`, `reward/unscorable`), left out of its group's statistics
(`stages.group_advantages`) and out of the batch and the loss (`stages.selection_stage`), never trained as a 0.

The issue's case: a group "42" / "41" / "42 (verifier crashed)" with reference 42. Scored as a 0, the crash
gave GRPO rewards (1, 0, 0): advantages (1.155, −0.577, −0.577). Right: the group is (1, 0), advantages ±0.707,
and the crashed sample has none.
"""

import dataclasses
from types import SimpleNamespace

import pytest
import reward_helpers as rh
import torch

from credo.core.advantages import ADVANTAGES, grpo
from credo.data import Example, Sample
from credo.envs.runner import VerifyRunner
from credo.models.tokenizer import CharTokenizer
from credo.rewards import score_samples
from credo.trainer import stages
from credo.trainer.config import Config

TOK = CharTokenizer()
EXAMPLES = {"q": Example("q", "What is 6*7?", 42)}


def _sample(text: str, group: int = 0) -> Sample:
    ids = torch.tensor(TOK.encode(text))
    C = len(ids)
    return Sample(example_id="q", group_id=group, prompt_ids=torch.tensor(TOK.encode_prompt("6*7")),
                  completion_ids=ids, loss_mask=torch.ones(C), segment_ids=torch.ones(C, dtype=torch.long),
                  sampler_logprobs=torch.zeros(C), finish_reason="stop", text=text)


def _group(marker: str, group: int = 0) -> list[Sample]:
    """The issue's group: right, wrong, and a right answer whose verification fails with `marker`."""
    return [_sample("<answer>42</answer>", group), _sample("<answer>41</answer>", group),
            _sample(f"<answer>42</answer> ({marker})", group)]


def _ctx() -> stages.StepContext:
    """The stage context the credit and selection stages read; the fields they do not read are None."""
    cfg = Config()  # rl.selection "all", no credit method, no truncation mask, no rethinking
    unused = {f.name: None for f in dataclasses.fields(stages.StepContext)}
    ctx = stages.StepContext(**{**unused, "cfg": cfg, "env": SimpleNamespace(name="test"), "tokenizer": TOK,
                                "generator": torch.Generator().manual_seed(0), "by_id": EXAMPLES, "providers": {}})
    ctx.selector = stages.SELECTORS["group"](ctx)
    return ctx


@pytest.fixture(scope="module")
def pool():
    with VerifyRunner(rh.marked, workers=1, timeout_s=2.0) as runner:
        yield runner


CASES = [("verifier crashed", 0), ("verifier crashed", 1), ("nan", 0), ("nan", 1), ("none", 0), ("none", 1),
         ("hang", 1)]  # a timeout needs a worker process: inline scoring cannot interrupt a hanging verifier


@pytest.mark.parametrize(("marker", "workers"), CASES)
def test_unscorable_sample_is_counted_and_left_out_of_group_statistics(marker, workers, pool):
    samples = _group(marker)
    runner = pool if workers else VerifyRunner(rh.marked, workers=0)
    m = score_samples(samples, EXAMPLES, None, {"outcome": 1.0}, runner)
    timeout = marker == "hang"
    assert m["verify/errors"] == float(not timeout) and m["verify/timeouts"] == float(timeout)
    assert m["verify/unscorable"] == 1.0 and m["reward/unscorable"] == 1.0
    assert [s.scorable for s in samples] == [True, True, False]
    assert samples[2].verdict.reason.startswith("timeout" if timeout else "error")
    assert m["reward/mean"] == pytest.approx(0.5)  # over the two scored samples

    adv = stages.group_advantages(samples, "grpo")
    two = grpo(torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long))  # the 2-sample group (1, 0)
    assert adv[:2].tolist() == pytest.approx(two.tolist()) and adv[2] == 0.0
    assert adv[:2].tolist() == pytest.approx([0.5 / (0.5**0.5 + 1e-6), -0.5 / (0.5**0.5 + 1e-6)])  # ±0.707


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_every_estimator_sees_only_the_scorable_samples(name):
    samples = _group("verifier crashed")
    score_samples(samples, EXAMPLES, None, {"outcome": 1.0}, VerifyRunner(rh.marked, workers=0))
    adv = stages.group_advantages(samples, name)
    two = ADVANTAGES[name](torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long))
    assert adv[:2].tolist() == pytest.approx(two.tolist()) and adv[2] == 0.0


def test_unscorable_sample_leaves_the_batch_and_the_loss():
    # group 0: the case; group 1: two right answers and a crash, a constant group once the crash is out
    samples = _group("verifier crashed", 0) + [_sample("<answer>42</answer>", 1), _sample("<answer>42</answer>", 1),
                                               _sample("<answer>42</answer> (verifier crashed)", 1)]
    score_samples(samples, EXAMPLES, None, {"outcome": 1.0}, VerifyRunner(rh.marked, workers=0))
    ctx, record = _ctx(), {}
    adv = stages.group_advantages(samples, "grpo")
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]  # (1, 1) is constant: no signal, whatever the crash would say
    stages.credit_stage(ctx, samples, adv, 0, record)
    assert samples[2].token_advantages is None and samples[5].token_advantages is None
    assert samples[0].token_advantages.tolist() == pytest.approx([float(adv[0])] * len(samples[0].completion_ids))
    batch = stages.selection_stage(ctx, samples, adv, record)
    kept = [0, 1, 3, 4]
    assert len(batch) == 4 and batch.rewards.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert batch.loss_mask.sum() == sum(len(samples[i].completion_ids) for i in kept)  # no crashed token
    row_adv = (batch.advantages * batch.loss_mask).sum(1) / batch.loss_mask.sum(1)
    assert row_adv.tolist() == pytest.approx([float(adv[i]) for i in kept])
    m = stages.rollout_metrics(samples, adv, len(batch))
    assert m["adv/nonzero_groups"] == 0.5 and m["adv/selected"] == pytest.approx(4 / 6)
    # group 0 holds a right and a wrong scorable answer; group 1's scorable answers are all right
    assert m["adv/mixed_correct_groups"] == 0.5
    samples[3].reward = 1.5  # a shaping term splits group 1's rewards: informative, yet its verdicts are unchanged
    m = stages.rollout_metrics(samples, adv, len(batch))
    assert m["adv/nonzero_groups"] == 1.0 and m["adv/mixed_correct_groups"] == 0.5


def test_a_batch_of_only_unscorable_samples_gives_no_update():
    samples = [_sample("<answer>42</answer> (verifier crashed)"), _sample("<answer>41</answer> (none)")]
    m = score_samples(samples, EXAMPLES, None, {"outcome": 1.0}, VerifyRunner(rh.marked, workers=0))
    assert m["verify/errors"] == 2.0 and m["reward/unscorable"] == 2.0 and m["reward/mean"] == 0.0
    adv = stages.group_advantages(samples, "grpo")
    assert adv.tolist() == [0.0, 0.0]
    ctx, record = _ctx(), {}
    stages.credit_stage(ctx, samples, adv, 0, record)
    assert stages.selection_stage(ctx, samples, adv, record) is None  # nothing to train on: not a failure
