"""Each issue-4 method switched on by config runs end to end through `train`, logs its metrics, and (with
its persistent state in the checkpoint) resumes exactly."""

import json

import pytest
import torch

from credo.models import load_policy
from credo.trainer import checkpoint as ckpt
from credo.trainer.config import load_config
from credo.trainer.loop import train

RETHINK = ["rethink.enabled=true", "rethink.reserve_tokens=4", "rethink.min_continuation=0",
           "rethink.require_correct=false", "rethink.skip_prob=0", "rethink.nll_coef=0.05",
           "rethink.reward_shaping=true"]
METHODS = {
    "ssr": (["rl.ssr=true"], "ssr/effective_share_before"),
    "dapo": (["rl.dynamic_sampling=true", "rl.overlong_cache=8", "rl.eps_high=0.28"], "dapo/rounds"),
    "hicra": (["rl.credit=hicra"], "hicra/semantic_entropy"),
    "first_error": (["rl.credit=first_error"], "credit/located"),
    "rethink": (RETHINK, "rethink/rate"),
    "multiturn": (['rl.multiturn=true', 'rl.tools=["calculator"]', "rl.max_turns=2", "curiosity.variant=paper"],
                  "tools/call_rate"),
}


def _records(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs if r["phase"] == "rl"]


@pytest.mark.parametrize("method", list(METHODS))
def test_method_runs_and_logs(method, tiny_overrides, tmp_path):
    overrides, key = METHODS[method]
    train(load_config(None, [*tiny_overrides, *overrides, f"run.name={method}"]))
    recs = _records(tmp_path / method)
    assert len(recs) == 2
    assert all(key in r for r in recs), sorted(recs[0])
    # a step either trains, has nothing left after selection, or has all-zero advantages (no backward, no Adam step)
    assert all(r["loss/optimizer_steps"] > 0 or r.get("loss/empty_batch") or r.get("loss/skipped_zero_adv")
               for r in recs)
    assert all(r.get("verify/errors", 0) == 0 for r in recs)


def test_ssr_and_hicra_state_resume_exactly(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "rl.ssr=true", "rl.credit=hicra", "rl.hicra_refresh=1", "rl.steps=4"]
    train(load_config(None, [*base, "run.name=full"]))
    train(load_config(None, [*base, "run.name=part", "rl.steps=2"]))
    state = ckpt.load(tmp_path / "part" / "checkpoint.pt")
    assert state["step"] == 2 and set(state["methods"]) == {"selector", "planning_mask"}  # SSR buffer, HICRA grams
    assert "samples" in state["methods"]["selector"] and "grams" in state["methods"]["planning_mask"]
    train(load_config(None, [*base, "run.name=part"]))
    a, _ = load_policy(tmp_path / "full" / "final_model")
    b, _ = load_policy(tmp_path / "part" / "final_model")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert _records(tmp_path / "full") == _records(tmp_path / "part")
