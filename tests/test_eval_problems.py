"""Per-problem evaluation files (`runs/<name>/evals/step_<n>.jsonl`) and the paired start → end gain over seeds."""

import json
from pathlib import Path

import pytest

from credo.core.stats import paired_gain, seed_difference
from credo.trainer.config import load_config
from credo.trainer.loop import train


def test_paired_gain_by_hand():
    # d = (0, 1, 0, -1): mean 0; sd √(2/3); SE √(2/3)/2
    gain, se = paired_gain([1, 0, 0, 1], [1, 1, 0, 0])
    assert gain == 0.0 and se == pytest.approx((2 / 3) ** 0.5 / 2, abs=1e-12)
    assert paired_gain([0.0], [1.0]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="equal"):
        paired_gain([1, 0], [1])


def test_seed_difference_by_hand():
    # a = (0, 1, 2), b = (3, 4, 5): diff −3; s² = 1 each, SE = √(1/3 + 1/3); of the C(6, 3) = 20 relabellings only
    # the two extreme ones reach |diff| = 3: p = 2/20
    diff, se, p = seed_difference([0.0, 1.0, 2.0], [3.0, 4.0, 5.0])
    assert diff == -3.0 and se == pytest.approx((2 / 3) ** 0.5, abs=1e-12) and p == pytest.approx(0.1, abs=1e-12)
    diff, se, p = seed_difference([1.0, 3.0], [3.0, 1.0])  # the same values: no difference, every split as far
    assert diff == 0.0 and p == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        seed_difference([1.0], [2.0, 3.0])


def test_train_writes_one_row_per_held_out_problem(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "run.name=ev", "eval.extra_verifiers=[\"numeric\"]"])
    train(cfg)
    run = tmp_path / "ev"
    files = sorted((run / "evals").glob("step_*.jsonl"))
    assert [f.name for f in files] == ["step_000000.jsonl", "step_000002.jsonl"]
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in evals if r["phase"] == "eval"}
    for f in files:
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        rec = evals[int(f.stem[5:])]
        assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
        assert sum(r["correct"] for r in rows) / 8 == rec["eval/greedy_acc"]
        assert sum(r["correct@numeric"] for r in rows) / 8 == rec["eval/greedy_acc@numeric"]
        assert all(r["n_samples"] == 2 and 0 <= r["n_correct"] <= 2 for r in rows)
        assert sum(r["n_correct"] for r in rows) / 16 == pytest.approx(rec["eval/pass@1"])


def test_sample_problems_samples_the_first_n_only(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "run.name=sub", "eval.sample_problems=3"])
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "sub" / "evals" / "step_000000.jsonl").read_text().splitlines()]
    assert len(rows) == 8  # greedy: every problem
    assert [("n_correct" in r) for r in rows] == [True] * 3 + [False] * 5
    rec = next(json.loads(x) for x in (tmp_path / "sub" / "metrics.jsonl").read_text().splitlines()
               if '"eval"' in x)
    assert rec["eval/sampled_problems"] == 3.0 and rec["time/eval"] > 0
    assert sum(r["n_correct"] for r in rows[:3]) / 6 == pytest.approx(rec["eval/pass@1"])


def _fake_run(root: Path, name: str, start: list[int], end: list[int]) -> Path:
    (root / name / "evals").mkdir(parents=True)
    for step, flags in ((0, start), (10, end)):
        rows = [{"id": f"p{i}", "correct": bool(c), "n_correct": 2 * c, "n_samples": 2} for i, c in enumerate(flags)]
        (root / name / "evals" / f"step_{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / name


def test_paired_gain_script_pools_seeds(load_script, tmp_path, capsys):
    a = _fake_run(tmp_path, "s0", [1, 0, 0, 1], [1, 1, 0, 1])  # 0.50 -> 0.75
    b = _fake_run(tmp_path, "s1", [0, 0, 1, 0], [0, 1, 1, 1])  # 0.25 -> 0.75
    out = tmp_path / "gain.json"
    assert load_script("paired_gain").main([str(a), str(b), "--keys", "correct", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["keys"]["correct"]
    # pooled d = (0,1,0,0, 0,1,0,1): mean 3/8, sample var (3·(5/8)² + 5·(3/8)²)/7 = 15/56, SE √(15/56/8)
    assert res["paired_gain"] == pytest.approx(3 / 8) and res["paired_se"] == pytest.approx((15 / 56 / 8) ** 0.5)
    assert [r["start"] for r in res["per_run"]] == [0.5, 0.25] and res["end_mean"] == 0.75
    assert json.loads(out.read_text())["pass@1"] == {"start": 0.375, "end": 0.75}
    assert "paired gain +0.3750" in capsys.readouterr().out


def test_paired_gain_script_refuses_a_missing_field(load_script, tmp_path):
    a = _fake_run(tmp_path, "s0", [1, 0], [1, 1])
    with pytest.raises(SystemExit, match="correct@numeric"):
        load_script("paired_gain").main([str(a), "--keys", "correct@numeric"])


def test_paired_gain_script_from_a_common_start(load_script, tmp_path):
    a = _fake_run(tmp_path, "s0", [1, 0, 0, 1], [1, 1, 0, 1])
    start = tmp_path / "base.json"  # what `credo eval --out` writes: the problems, no samples here
    start.write_text(json.dumps({"problems": [{"id": f"p{i}", "correct": c} for i, c in enumerate([0, 0, 0, 1])]}))
    out = tmp_path / "gain.json"
    args = [str(a), "--keys", "correct", "--start", str(start), "--json", str(out)]
    assert load_script("paired_gain").main(args) == 0
    res = json.loads(out.read_text())
    r = res["keys"]["correct"]
    assert r["per_run"][0]["start"] == 0.25 and r["per_run"][0]["start_step"] is None
    assert r["paired_gain"] == 0.5 and "pass@1" not in res  # d = (1, 1, 0, 0)
