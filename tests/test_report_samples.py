"""Sampled prompts and completions in the run report: evaluate's `eval/samples`, rendered escaped per evaluation."""

from __future__ import annotations

import json
import math

import torch
from toy_env import DigitsEnv

from credo.data import Example, Score
from credo.models import build_policy
from credo.trainer.config import ModelConfig
from credo.trainer.evaluate import SHOWN_SAMPLES, eval_samples, evaluate
from credo.trainer.report import write_report


def test_evaluate_returns_the_first_greedy_samples_with_their_verdicts():
    torch.manual_seed(0)
    policy, tok = build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64))
    env = DigitsEnv()
    examples = env.examples("test")[:6]
    out = evaluate(policy, tok, env, examples, max_new_tokens=12, n_samples=0, pass_k=[], temperature=1.0, seed=0,
                   workers=0)
    shown = out["eval/samples"]
    assert SHOWN_SAMPLES == 4 and len(shown) == 4
    assert [s["prompt"] for s in shown] == ["0+0\n", "1+1\n", "2+2\n", "3+3\n"]  # rendered, in example order
    for s, ex in zip(shown, examples[:4], strict=True):
        score = env.verify(s["completion"], ex)  # the reward shown is the env's verdict on that very text
        assert math.isclose(s["reward"], score.value) and s["correct"] is score.correct
    assert json.loads(json.dumps(out)) == out  # the JSONL sink can write the record as it is
    assert isinstance(out["eval/greedy_acc"], float)


def test_eval_samples_clips_text_and_marks_unscorable():
    class Env:
        def render_prompt(self, ex: Example) -> str:
            return "p" * 10

    class S:
        text = "c" * 10

    got = eval_samples(Env(), [Example("a", "", 1)] * 5, [S()] * 5,
                       [Score(0.5, correct=True), Score.unscorable("timeout")] + [Score(0.0)] * 3, max_chars=3)
    assert got[:2] == [{"prompt": "ppp", "completion": "ccc", "reward": 0.5, "correct": True},
                       {"prompt": "ppp", "completion": "ccc", "reward": None, "correct": False}]
    assert len(got) == 4  # k = SHOWN_SAMPLES of 5


def _eval_record(step: int, samples: list[dict]) -> dict:
    return {"phase": "eval", "step": step, "eval/greedy_acc": 0.5, "eval/samples": samples}


def test_report_renders_samples_escaped(tmp_path):
    evil = {"prompt": "Is 1 < 2 & 3 > 2?", "completion": "<script>alert(1)</script><answer>yes</answer>",
            "reward": 1.0, "correct": True}
    wrong = {"prompt": "2+2?", "completion": "five", "reward": 0.0, "correct": False}
    unscorable = {"prompt": "x", "completion": "y", "reward": None, "correct": False}
    records = [_eval_record(0, [wrong]), {"phase": "rl", "step": 1, "reward/mean": 0.5},
               _eval_record(5, [evil, unscorable]), _eval_record(10, [evil])]
    page = write_report(tmp_path, records, {"eval_acc_start": 0.5}).read_text()
    section = page[page.index("<h2>Sample completions</h2>"):]
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;answer&gt;yes&lt;/answer&gt;" in section
    assert "Is 1 &lt; 2 &amp; 3 &gt; 2?" in section
    assert [section.count(f"<summary>step {s}</summary>") for s in (0, 5, 10)] == [1, 1, 1]
    assert section.count("<details open>") == 2 and section.count("<details>") == 1  # first and last open
    assert "<td>unscorable</td>" in section and "<td>1</td>" in section and "<td>0</td>" in section
    assert section.count('class="ok">correct<') == 2 and section.count('class="bad">wrong<') == 2
    assert "<th>eval/samples</th>" not in page  # not a column of the evaluations table


def test_report_without_samples_has_no_section(tmp_path):
    page = write_report(tmp_path, [{"phase": "eval", "step": 0, "eval/greedy_acc": 0.5}], {}).read_text()
    assert "Sample completions" not in page
