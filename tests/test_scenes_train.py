"""The vision path end to end: TinyVLM on the scenes sandbox with Perception Verification and MoCA routing."""

import json

from credo.trainer.config import load_config
from credo.trainer.loop import train


def test_moca_preset_trains_a_tinyvlm_on_scenes(tmp_path):
    cfg = load_config("configs/scenes_moca.toml", [
        f"run.out_dir={tmp_path}", "run.name=s", "run.progress=false", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.d_ff=64", "env.n_sft=64", "env.n_train=16", "env.n_test=4", "sft.steps=3",
        "sft.batch_size=8", "sft.warmup=1", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
        "rl.max_new_tokens=48", "eval.n_samples=1", "eval.pass_k=[1]", "eval.every=100",
    ])
    train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in recs if r["phase"] == "rl"]
    assert len(rl) == 2
    for r in rl:
        assert "pv/rate" in r and "segments/missing_perception" in r and r["verify/errors"] == 0
        assert r["loss/optimizer_steps"] > 0 or r.get("loss/empty_batch") or r.get("loss/skipped_zero_adv")
