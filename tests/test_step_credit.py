"""`rl.credit = "first_error"`: blame of a failed sequence lands on its first wrong step (the arith step checker)."""

from types import SimpleNamespace

import pytest
import torch

from credo.core.advantages import to_tokens
from credo.core.credit import AFTER, BEFORE, CREDIT, NEEDS, WRONG, first_error
from credo.data import Example, Sample, Score, collate
from credo.envs.arith import ArithEnv
from credo.models.tokenizer import CharTokenizer
from credo.rewards.steps import fill_step_labels, step_labels
from credo.trainer.config import RLConfig

B_, W_, A_ = BEFORE, WRONG, AFTER


def _inputs(steps):
    """The credit inputs first_error reads (`core.credit.CreditInputs`): only the step labels are set."""
    return SimpleNamespace(segment_ids=None, correct=None, planning_mask=None, perception_ok=None, step_labels=steps)


def test_first_error_hand_case():
    adv = torch.tensor([[-1.0, -1.0, -1.0, -1.0, 0.0],  # failed, wrong step at tokens 1-2
                        [0.5, 0.5, 0.5, 0.5, 0.0],  # succeeded, an error located anyway: keeps its credit
                        [-0.5, -0.5, -0.5, 0.0, 0.0],  # failed, nothing located: outcome credit everywhere
                        [-2.0, -2.0, -2.0, -2.0, -2.0]])  # failed, wrong step is the last token (early stop)
    steps = torch.tensor([[B_, W_, W_, A_, A_],
                          [B_, W_, A_, A_, A_],
                          [B_, B_, B_, B_, B_],
                          [B_, B_, B_, B_, W_]])
    out = first_error(adv, _inputs(steps), RLConfig())
    assert out.tolist() == [[0.0, -1.0, -1.0, 0.0, 0.0],
                            [0.5, 0.5, 0.5, 0.5, 0.0],
                            [-0.5, -0.5, -0.5, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0, -2.0]]
    assert CREDIT["first_error"] is first_error and NEEDS["first_error"] == ("step_labels",)


def test_first_error_needs_step_labels_of_matching_shape():
    with pytest.raises(ValueError, match="step_labels, which no stage filled"):
        first_error(torch.zeros(1, 2), _inputs(None))
    with pytest.raises(ValueError, match=r"step_labels \(1, 3\) must be \(1, 2\)"):
        first_error(torch.zeros(1, 2), _inputs(torch.zeros(1, 3, dtype=torch.long)))


CHAIN = Example(id="c", prompt="7+0*7-4", reference=45, meta={"steps": [("", 7), ("+", 0), ("*", 7), ("-", 4)]})
REF = "first 7+0=7\nthen 7*7=49\nthen 49-4=45\ncheck: done\n<answer>45</answer>"


@pytest.mark.parametrize("completion,wrong_line", [
    (REF, None),
    (REF + "\nanything after the reference's last line", None),
    ("first 7+0=7\nthen 7*6=42\nthen 42-4=38\ncheck: done\n<answer>38</answer>", "then 7*6=42\n"),  # wrong operand
    ("first 7+0=7\nthen 7*7=48\nthen 48-4=44\ncheck: done\n<answer>44</answer>", "then 7*7=48\n"),  # slip
    ("first 7+0=7\nthen 7*7=49\ncheck: done\n<answer>49</answer>", "check: done\n"),  # a skipped step
    ("first 7+0=7\nthen 7*7=49\nthen 49-4=45\ncheck: done\n<answer>44</answer>", "<answer>44</answer>"),
    ("<answer>45</answer>", "<answer>45</answer>"),  # answering at once is not the worked step
    ("first 7+0=7\nthen 7*7", "then 7*7"),  # cut off mid-line
])
def test_arith_step_checker(completion, wrong_line):
    span = ArithEnv().first_error(completion, CHAIN)
    if wrong_line is None:
        assert span is None
    else:
        assert completion[span[0] : span[1]] == wrong_line


def test_arith_step_checker_early_stop_points_at_the_end():
    text = "first 7+0=7\nthen 7*7=49\n"
    assert ArithEnv().first_error(text, CHAIN) == (len(text), len(text))


def test_step_labels_put_an_early_stop_on_eos():
    tok = CharTokenizer()
    ids = tok.encode("ab\n") + [tok.eos_id]
    assert step_labels(ids, tok, (3, 3)).tolist() == [B_, B_, B_, W_]
    assert step_labels(ids, tok, None).tolist() == [B_] * 4


def _sample(tok, text, outcome, group=0):
    ids = torch.tensor(tok.encode(text) + [tok.eos_id])
    C = len(ids)
    return Sample(example_id="c", group_id=group, prompt_ids=torch.tensor(tok.encode("7+0*7-4\n")),
                  completion_ids=ids, loss_mask=torch.ones(C), segment_ids=torch.zeros(C, dtype=torch.long),
                  sampler_logprobs=torch.zeros(C), finish_reason="stop", text=text,
                  reward=outcome, verdict=Score(outcome))


def test_batch_credit_blames_only_the_wrong_line():
    tok = CharTokenizer()
    bad = "first 7+0=7\nthen 7*7=48\nthen 48-4=44\ncheck: done\n<answer>44</answer>"
    samples = [_sample(tok, REF, 1.0), _sample(tok, bad, 0.0)]
    batch = collate(samples, tok.pad_id)
    metrics = fill_step_labels(batch, samples, {"c": CHAIN}, ArithEnv(), tok)
    assert batch.step_labels.shape == batch.loss_mask.shape
    adv = CREDIT["first_error"](to_tokens(torch.tensor([1.0, -1.0]), batch.loss_mask), batch, RLConfig())
    P = len(samples[1].prompt_ids)
    blamed = [k - P for k in torch.nonzero(adv[1]).flatten().tolist()]
    start = bad.index("then 7*7=48")
    assert blamed == list(range(start, start + len("then 7*7=48\n")))
    assert (adv[1][adv[1] != 0] == -1.0).all()
    assert torch.equal(adv[0], to_tokens(torch.tensor([1.0]), batch.loss_mask[:1])[0])  # the correct one: all +1
    assert metrics == {"credit/located": 1.0, "credit/wrong_step_tokens": 12.0}


def test_env_without_step_checker_is_a_clear_error():
    tok = CharTokenizer()
    samples = [_sample(tok, REF, 1.0)]

    class NoChecker:
        name = "nochecker"

    with pytest.raises(ValueError, match="no first_error"):
        fill_step_labels(collate(samples, tok.pad_id), samples, {"c": CHAIN}, NoChecker(), tok)
