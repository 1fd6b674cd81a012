"""End-to-end behaviour of the trainer on tiny runs: smoke, resume, interruption, CLI, report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from credo.cli import main
from credo.models import load_policy
from credo.trainer import checkpoint as ckpt
from credo.trainer.config import load_config
from credo.trainer.loop import train

DIGITS = ["env.name=toy_env:make", "sft.enabled=false"]  # dense reward: every group has signal


def _rl_records(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs if r["phase"] == "rl"]


def test_two_rl_steps_change_every_parameter(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, *DIGITS, "run.name=smoke"])
    summary = train(cfg)
    run = tmp_path / "smoke"
    start, _ = load_policy(run / "start_model")
    final, _ = load_policy(run / "final_model")
    recs = _rl_records(run)
    assert len(recs) == 2 and all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in recs)
    assert all(r["loss/optimizer_steps"] == 2 and r["loss/skipped"] == 0 for r in recs)
    s, f = dict(start.named_parameters()), dict(final.named_parameters())
    unchanged = [n for n in s if torch.equal(s[n], f[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert summary["peak_rss_mb"] > 0 and (run / "report.html").is_file()


def test_resume_equals_uninterrupted_run(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "env.sft_depths=[1]", "sft.steps=5", "rl.steps=4", "rl.kl_coef=0.05"]
    train(load_config(None, [*base, "run.name=full"]))
    train(load_config(None, [*base, "run.name=part", "rl.steps=2"]))  # stops after step 2 (checkpoint)
    assert ckpt.load(tmp_path / "part" / "checkpoint.pt")["step"] == 2
    train(load_config(None, [*base, "run.name=part"]))  # resumes from step 2 to 4
    a, _ = load_policy(tmp_path / "full" / "final_model")
    b, _ = load_policy(tmp_path / "part" / "final_model")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert _rl_records(tmp_path / "full") == _rl_records(tmp_path / "part")
    assert ckpt.load(tmp_path / "part" / "checkpoint.pt")["step"] == 4


def test_cli_train_prints_summary_and_writes_report(tiny_overrides, tmp_path, capsys):
    assert main(["train", *tiny_overrides, "run.name=cli"]) == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("summary: ")]
    assert len(line) == 1
    fields = dict(kv.split("=") for kv in line[0].removeprefix("summary: ").split())
    assert set(fields) == {"eval_acc_start", "eval_acc_end", "wall_s", "peak_rss_mb"}
    assert all(float(v) >= 0 for v in fields.values())
    run = tmp_path / "cli"
    assert (run / "report.html").is_file() and (run / "plots" / "reward.png").is_file()
    assert main(["eval", str(run / "checkpoint.pt")]) == 0
    assert "eval/greedy_acc" in capsys.readouterr().out


def test_non_finite_loss_skips_then_stops(tiny_overrides, tmp_path, monkeypatch):
    import credo.trainer.update as upd

    def nan_aggregate(loss, mask, mode, norm_len=None):
        return (loss * mask).sum() * float("nan")

    monkeypatch.setattr(upd, "aggregate", nan_aggregate)
    cfg = load_config(None, [*tiny_overrides, *DIGITS, "run.name=nan", "rl.steps=5"])
    try:
        train(cfg)
        raise AssertionError("expected the run to stop")
    except RuntimeError as e:
        assert "3 consecutive steps" in str(e)
    recs = _rl_records(tmp_path / "nan")
    assert len(recs) == 3 and all(r["loss/skipped"] == 2 and r["loss/optimizer_steps"] == 0 for r in recs)


def test_ctrl_c_saves_checkpoint_and_exits(tiny_overrides, tmp_path):
    run = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "credo.cli", "train", *tiny_overrides, *DIGITS, "run.name=sigint",
           "rl.steps=500", "run.checkpoint_every=0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and '"phase": "rl"' in metrics.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "checkpoint saved" in out and "Traceback" not in out
    state = ckpt.load(run / "checkpoint.pt")
    assert 1 <= state["step"] < 500
    assert len([r for r in state["history"] if r["phase"] == "rl"]) == state["step"]


def test_a_fresh_start_in_an_old_run_folder_leaves_nothing_of_the_old_run(tiny_overrides, tmp_path):
    from credo.cli import main

    assert main(["train", *tiny_overrides, "run.name=again", "rl.steps=2", "eval.every=2"]) == 0
    evals = tmp_path / "again" / "evals"
    assert sorted(p.name for p in evals.iterdir()) == ["step_000000.jsonl", "step_000002.jsonl"]
    assert main(["train", *tiny_overrides, "run.name=again", "rl.steps=1", "eval.every=2", "run.resume=false"]) == 0
    assert sorted(p.name for p in evals.iterdir()) == ["step_000000.jsonl", "step_000001.jsonl"]  # no stale step 2


def test_a_bad_dataset_row_stops_the_run_before_its_folder_is_written(tiny_overrides, tmp_path, capsys):
    from credo.cli import main

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(f'{{"prompt": "{i}+1", "answer": "{i + 1}"}}\n' for i in range(8)))
    bad.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    data = ["env.name=dataset", f'env.train_files=["{good}"]', f'env.test_files=["{bad}"]', "sft.enabled=false"]
    assert main(["train", *tiny_overrides, *data, "run.name=bad"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line 2: field 'answer'" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
