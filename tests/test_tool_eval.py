"""Evaluation with multi-turn tool rollouts and with tools forbidden; per-sample tool errors; eval tool metrics;
`credo eval --no-tools`; the curiosity variants' operation counts."""

import json
import math

import torch
from test_multiturn import CALC, LM, Scripted, _arith

import credo.rollout.multiturn as mt
from credo.cli import main
from credo.data import SEGMENTS, Sample
from credo.envs.tools import TOOLS
from credo.models import build_policy, save_policy
from credo.rewards.curiosity import count_ops
from credo.rollout.multiturn import multiturn_rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer.evaluate import ToolEval, evaluate, tool_eval_metrics


def _calc_policy(n_calls: int = 1):
    torch.manual_seed(0)
    model, tok = build_policy(LM)
    return Scripted(model.eval(), tok, CALC, n_calls=n_calls).eval(), tok


def test_tools_disabled_refuses_the_call_and_continues():
    policy, tok = _calc_policy()
    env = _arith()
    samples, m = multiturn_rollout(policy, tok, env, env.examples("train")[:2], 2, SamplingParams(120, 1.0),
                                   torch.Generator().manual_seed(0), max_turns=3, tools_enabled=False)
    assert m["tools/refused"] == 4.0 and m["tools/call_rate"] == 0.0 and m["tools/malformed"] == 0.0
    for s in samples:
        assert s.text.startswith(CALC + "\n<observation>Execution error:\ntools are disabled\n</observation>\n")
        assert "42" not in s.text.split("</observation>")[0]  # the calculator did not run
        assert s.n_tool_calls == 0 and s.n_tool_errors == 0
        obs = s.segment_ids == SEGMENTS["observation"]
        assert torch.equal(s.loss_mask == 0, obs)
        assert len(s.completion_ids) > int(obs.sum()) + len(CALC)  # the policy went on after the refusal


def test_n_tool_errors_counts_malformed_calls_per_sample(monkeypatch):
    monkeypatch.setattr(mt, "CALL_END", " ")  # every space ends a (malformed) call
    torch.manual_seed(1)
    model, tok = build_policy(LM)
    samples, m = multiturn_rollout(model.eval(), tok, _arith(), _arith().examples("train")[:2], 2,
                                   SamplingParams(150, 1.0), torch.Generator().manual_seed(0), max_turns=3)
    assert sum(s.n_tool_errors for s in samples) == m["tools/malformed"] > 0
    for s in samples:
        assert s.n_tool_errors == s.text.count("<observation>Execution error:")


def test_evaluate_with_tools_and_forbidden():
    policy, tok = _calc_policy()
    env = _arith()
    exs = env.examples("test")
    tools = {"calculator": TOOLS["calculator"]}
    kw = dict(max_new_tokens=100, n_samples=2, pass_k=[1, 2], temperature=1.0, seed=0, workers=0)
    on = evaluate(policy, tok, env, exs, tools=ToolEval(tools, max_turns=2), **kw)
    off = evaluate(policy, tok, env, exs, tools=ToolEval(tools, max_turns=2, enabled=False), **kw)
    plain = evaluate(policy, tok, env, exs, **kw)
    assert on["eval/tools_enabled"] == 1.0 and off["eval/tools_enabled"] == 0.0
    assert on["eval/tool_call_rate"] == 1.0 and on["eval/calls_per_rollout"] == 1.0
    assert off["eval/tool_call_rate"] == 0.0 and off["eval/tool_attempt_rate"] == 1.0
    assert on["eval/acc_with_tool"] == on["eval/greedy_acc"] and math.isnan(on["eval/acc_without_tool"])
    assert off["eval/acc_without_tool"] == off["eval/greedy_acc"] and math.isnan(off["eval/acc_with_tool"])
    assert "eval/tool_call_rate" not in plain and "eval/pass@2" in on and "eval/pass@2" in off
    # greedy turns differ after the observation: the executed call's "42" vs the refusal
    assert on["eval/response_len"] != off["eval/response_len"]


def test_tool_eval_metrics_hand_computed():
    def s(calls, errors, text):
        z = torch.zeros(1)
        return Sample("e", 0, z.long(), z.long(), z, z.long(), z, "stop", text=text, n_tool_calls=calls,
                      n_tool_errors=errors)

    samples = [s(1, 0, "a</tool_call>"), s(2, 1, "b</tool_call>"), s(0, 1, "c</tool_call>"), s(0, 0, "d")]
    m = tool_eval_metrics(samples, [True, False, True, True])
    assert m == {"eval/tool_call_rate": 0.5, "eval/tool_attempt_rate": 0.75, "eval/calls_per_rollout": 0.75,
                 "eval/tool_errors_per_rollout": 0.5, "eval/acc_with_tool": 0.5, "eval/acc_without_tool": 1.0}


def test_cli_eval_no_tools(tmp_path):
    policy, tok = _calc_policy()
    save_policy(policy.inner, tok, tmp_path / "m")
    common = ["env.width=1", "env.n_test=3", "env.sft_depths=[1]", "env.rl_depths=[1]", "rl.max_new_tokens=100",
              "eval.n_samples=0", "reward.workers=0", "run.threads=1", "rl.multiturn=true",
              'rl.tools=["calculator"]', "rl.max_turns=2"]
    # overrides may come before or after the options
    assert main(["eval", str(tmp_path / "m"), *common[:4], "--no-tools", *common[4:], "--out",
                 str(tmp_path / "off.json")]) == 0
    assert main(["eval", str(tmp_path / "m"), *common, "--out", str(tmp_path / "on.json")]) == 0
    off, on = (json.loads((tmp_path / f).read_text()) for f in ("off.json", "on.json"))
    assert off["tools"] == "off" and off["eval/tools_enabled"] == 0.0 and off["eval/tool_call_rate"] == 0.0
    assert on["tools"] == "on" and on["eval/tools_enabled"] == 1.0 and "eval/tool_call_rate" in on


def test_count_ops_per_variant():
    assert count_ops([1, 0, 2], [1, 2, 0], "paper").tolist() == [1.0, 0.0, 2.0]
    assert count_ops([1, 0, 2], [1, 2, 0], "code").tolist() == [2.0, 2.0, 2.0]


def test_ablate_tool_call_rate_columns():
    from credo.trainer.ablate import COLUMNS, run_columns

    recs = [{"phase": "eval", "step": 0, "eval/greedy_acc": 0.1, "eval/tool_call_rate": 0.2},
            {"phase": "rl", "step": 1, "tools/call_rate": 0.5}, {"phase": "rl", "step": 2, "tools/call_rate": 0.25},
            {"phase": "eval", "step": 2, "eval/greedy_acc": 0.3, "eval/tool_call_rate": 0.75}]
    cols = run_columns(recs, target=None, wall_s=1.0)
    assert {"tool_call_rate", "final_tool_call_rate"} <= set(COLUMNS)
    assert cols["tool_call_rate"] == 0.375 and cols["final_tool_call_rate"] == 0.75
    assert math.isnan(run_columns(recs[:1], None, 1.0)["tool_call_rate"])
