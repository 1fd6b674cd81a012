"""`rl.credit = "first_error"`: blame of a failed sequence lands on its first wrong step (the arith step checker)."""

import pytest
import torch

from credo.core.advantages import to_tokens
from credo.core.credit import AFTER, BEFORE, CREDIT, WRONG, FirstErrorParams, first_error
from credo.data import Example, Sample, collate
from credo.envs.arith import ArithEnv
from credo.models.tokenizer import CharTokenizer
from credo.rewards.steps import first_error_params, step_labels

B_, W_, A_ = BEFORE, WRONG, AFTER


def test_first_error_hand_case():
    adv = torch.tensor([[-1.0, -1.0, -1.0, -1.0, 0.0],  # failed, wrong step at tokens 1-2
                        [0.5, 0.5, 0.5, 0.5, 0.0],  # succeeded, an error located anyway: keeps its credit
                        [-0.5, -0.5, -0.5, 0.0, 0.0],  # failed, nothing located: outcome credit everywhere
                        [-2.0, -2.0, -2.0, -2.0, -2.0]])  # failed, wrong step is the last token (early stop)
    steps = torch.tensor([[B_, W_, W_, A_, A_],
                          [B_, W_, A_, A_, A_],
                          [B_, B_, B_, B_, B_],
                          [B_, B_, B_, B_, W_]])
    out = first_error(adv, torch.zeros_like(steps), FirstErrorParams(steps))
    assert out.tolist() == [[0.0, -1.0, -1.0, 0.0, 0.0],
                            [0.5, 0.5, 0.5, 0.5, 0.0],
                            [-0.5, -0.5, -0.5, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0, -2.0]]
    assert CREDIT["first_error"] is first_error


def test_first_error_needs_matching_params():
    with pytest.raises(ValueError, match="needs params"):
        first_error(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="must match"):
        first_error(torch.zeros(1, 2), torch.zeros(1, 2), FirstErrorParams(torch.zeros(1, 3, dtype=torch.long)))


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
                  reward=outcome, reward_parts={"outcome": outcome})


def test_batch_credit_blames_only_the_wrong_line():
    tok = CharTokenizer()
    bad = "first 7+0=7\nthen 7*7=48\nthen 48-4=44\ncheck: done\n<answer>44</answer>"
    samples = [_sample(tok, REF, 1.0), _sample(tok, bad, 0.0)]
    batch = collate(samples, tok.pad_id)
    params, metrics = first_error_params(samples, batch, {"c": CHAIN}, ArithEnv(), tok)
    adv = CREDIT["first_error"](to_tokens(torch.tensor([1.0, -1.0]), batch.loss_mask), batch.segment_ids, params)
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
        first_error_params(samples, collate(samples, tok.pad_id), {"c": CHAIN}, NoChecker(), tok)
