"""`credo ablate`: variants x seeds from one warm start per seed, resumable, one summary and report."""

import json
import math

import pytest

from credo.cli import main
from credo.trainer import checkpoint as ckpt
from credo.trainer.ablate import markdown_table, parse_variant, run_columns


def test_ablation_runs_variants_from_a_shared_warm_start(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate", *tiny_overrides, "sft.steps=5", "--variants", "grpo,rloo,lr:rl.lr=1e-3", "--seeds", "2",
            "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["variants"]) == ["grpo", "rloo", "lr"] and summary["seeds"] == 2
    for cols in summary["variants"].values():
        assert cols["final_acc"]["n"] == 2 and 0 <= cols["final_acc"]["mean"] <= 1
        assert cols["wall_s"]["mean"] > 0
        assert cols["rethink_rate"]["n"] == 0  # not logged by these variants: shown as "–", not as 0
    for seed in (0, 1):  # every variant of a seed starts from the same model: same step-0 evaluation
        first = []
        for v in ("grpo", "rloo", "lr"):
            recs = [json.loads(x) for x in (out / f"{v}-s{seed}" / "metrics.jsonl").read_text().splitlines()]
            first.append(next(r for r in recs if r["phase"] == "eval"))
            cfg = ckpt.load(out / f"{v}-s{seed}" / "checkpoint.pt")["config"]
            assert cfg["run"]["seed"] == seed and cfg["model"]["path"] == str(out / f"warm-s{seed}")
        assert len({json.dumps({k: r[k] for k in r if not k.startswith("time")}) for r in first}) == 1
    assert (out / "report.html").is_file() and (out / "plots" / "ablate_acc.png").is_file()
    assert "| grpo |" in capsys.readouterr().out

    before = {p: p.stat().st_mtime for p in out.glob("*/metrics.jsonl")}
    assert main(args) == 0  # finished runs are read back, not re-run
    assert before == {p: p.stat().st_mtime for p in out.glob("*/metrics.jsonl")}


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        parse_variant("nope")
    assert parse_variant("x:rl.lr=1;rl.steps=3") == ("x", ["rl.lr=1", "rl.steps=3"])


def test_run_columns_by_hand():
    recs = [
        {"phase": "eval", "step": 0, "eval/greedy_acc": 0.4},
        {"phase": "rl", "step": 1, "adv/nonzero_groups": 0.5, "rethink/rate": 0.25},
        {"phase": "rl", "step": 2, "adv/nonzero_groups": 1.0, "rethink/rate": 0.75},
        {"phase": "eval", "step": 2, "eval/greedy_acc": 0.6},
        {"phase": "eval", "step": 4, "eval/greedy_acc": 0.5},
    ]
    c = run_columns(recs, target=0.55, wall_s=3.0)
    assert c["final_acc"] == 0.5 and c["best_acc"] == 0.6 and c["steps_to_target"] == 2.0
    assert c["effective_share"] == 0.75 and c["informative_groups"] == 0.75
    assert c["rethink_rate"] == 0.5 and math.isnan(c["semantic_entropy"])
    assert math.isnan(run_columns(recs, target=0.9, wall_s=1.0)["steps_to_target"])
    assert run_columns(recs, target=None, wall_s=1.0, gain=0.1)["steps_to_target"] == 2.0  # 0.4 + 0.1 at step 2
    assert math.isnan(run_columns(recs, target=None, wall_s=1.0, gain=0.3)["steps_to_target"])
    table = markdown_table({"variants": {"v": {k: {"mean": 1.0, "std": 0.0, "n": 1} for k in c}}})
    assert table.splitlines()[2].startswith("| v | 1.000 ± 0.000")


def test_attribution_columns_from_the_final_eval_and_tables_skip_absent_columns():
    recs = [
        {"phase": "eval", "step": 0, "eval/greedy_acc": 0.2, "eval/attribution/perception_acc": 0.1},
        {"phase": "rl", "step": 1, "pv/agreement": 0.8},
        {"phase": "rl", "step": 2, "pv/agreement": 0.6},
        {"phase": "eval", "step": 2, "eval/greedy_acc": 0.3, "eval/attribution/perception_acc": 0.4,
         "eval/attribution/bad_seeing_share": 0.75, "eval/attribution/bad_thinking_share": 0.25,
         "eval/attribution/reasoning_given_perception": 0.9},
    ]
    c = run_columns(recs, target=None, wall_s=1.0)
    assert c["perception_acc"] == 0.4 and c["bad_seeing_share"] == 0.75 and c["bad_thinking_share"] == 0.25
    assert c["reasoning_given_perception"] == 0.9 and abs(c["pv_agreement"] - 0.7) < 1e-12
    arith = run_columns([{"phase": "eval", "step": 0, "eval/greedy_acc": 0.2}], target=None, wall_s=1.0)
    assert math.isnan(arith["perception_acc"]) and math.isnan(arith["pv_agreement"])
    summary = {"seeds": 1, "variants": {"v": {k: {"mean": 0.5, "std": 0.0, "n": 0 if math.isnan(x) else 1}
                                              for k, x in arith.items()}}}
    head = markdown_table(summary).splitlines()[0]
    assert "final_acc" in head and "perception_acc" not in head and "pv_agreement" not in head


def test_report_plots_the_tool_call_rate_when_runs_log_it(tmp_path):
    from credo.trainer.ablate import write_ablation_report

    def recs(rate: float) -> list[dict]:
        return [{"phase": "eval", "step": 0, "eval/greedy_acc": 0.1, "eval/tool_call_rate": 0.0},
                *({"phase": "rl", "step": s, "tools/call_rate": rate * s} for s in (1, 2, 3)),
                {"phase": "eval", "step": 3, "eval/greedy_acc": 0.2, "eval/tool_call_rate": rate}]

    runs = {"curiosity": [(recs(0.3), 1.0), (recs(0.2), 1.0)], "plain": [(recs(0.1), 1.0)]}
    summary = {"seeds": 2, "target_acc": None, "target_gain": 0.05,
               "variants": {n: {"final_acc": {"mean": 0.2, "std": 0.0, "n": len(r)}} for n, r in runs.items()}}
    page = write_ablation_report(tmp_path, runs, summary)
    assert (tmp_path / "plots" / "ablate_tool_call_rate.png").is_file()
    assert (tmp_path / "plots" / "ablate_eval_tool_call_rate.png").is_file()
    assert "ablate_tool_call_rate.png" in page.read_text()
    (tmp_path / "x").mkdir()
    write_ablation_report(tmp_path / "x", {"grpo": [(recs(0.1)[:1], 1.0)]}, summary)
    assert not (tmp_path / "x" / "plots" / "ablate_tool_call_rate.png").exists()  # not logged: no empty plot
