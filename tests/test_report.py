"""The HTML run report: plots written and linked, summary/eval/timing tables, config, and JSONL reading."""

import json
import re
from pathlib import Path

import pytest

from credo.trainer.report import read_metrics, write_report

ALL_PLOTS = {"reward.png", "accuracy.png", "length.png", "timing.png", "sft_loss.png"}


def _rl(step: int) -> dict:
    return {
        "phase": "rl",
        "step": step,
        "reward/mean": 0.1 + 0.02 * step,
        "reward/correct": 0.05 * step / 2,
        "rollout/response_len": 100.0 - step,
        "loss/policy": -0.01,
        "time/rollout": 2.0,
        "time/reward": 0.5,
        "time/advantage": 0.1,
        "time/update": 1.4,
        "time/step": 4.0,
        "note": "not a number",  # ignored
    }


def _records() -> list[dict]:
    sft = [{"phase": "sft", "step": s, "sft/loss": 2.0 / (s + 1)} for s in range(10)]
    rl = [_rl(s) for s in range(20)]
    rl[3]["reward/mean"] = "nan?"  # non-numeric values are skipped
    del rl[4]["time/reward"]  # missing keys are tolerated
    ev = [
        {"phase": "eval", "step": s, "eval/greedy_acc": 0.2 + s / 100, "eval/pass@1": 0.25, "eval/pass@8": 0.6,
         "eval/pass@4": 0.5, "eval/response_len": 90.0}
        for s in (0, 10, 20)
    ]
    return sft + rl + ev


def _img_srcs(page: str) -> set[str]:
    return set(re.findall(r'<img src="plots/([^"]+)"', page))


def _check_pngs(run: Path, names: set[str]) -> None:
    for name in names:
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG", name


def test_full_report(tmp_path: Path):
    run = tmp_path / "my_run<1>"
    summary = {"final/greedy_acc": 0.123456789, "reward/mean": 12345.678}
    config = {"lr": 1e-6, "name": "a<b>&c", "group_size": 8}
    out = write_report(run, _records(), summary, config)
    assert out == run / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    assert "my_run&lt;1&gt;" in page and "my_run<1>" not in page  # title escaped
    srcs = _img_srcs(page)
    assert srcs == ALL_PLOTS
    _check_pngs(run, srcs)
    assert "0.1235" in page and "1.235e+04" in page  # 4 significant digits
    assert "final/greedy_acc" in page
    # eval table: every eval column, pass@k in numeric order
    for col in ("eval/greedy_acc", "eval/pass@1", "eval/pass@4", "eval/pass@8", "eval/response_len"):
        assert f"<th>{col}</th>" in page
    assert page.index("<th>eval/pass@4</th>") < page.index("<th>eval/pass@8</th>")
    # timing table: means and share of time/step (rollout 2.0 / 4.0 = 50%)
    assert "<td>time/rollout</td><td>2</td><td>50.0%</td>" in page
    assert "<td>time/step</td><td>4</td><td>100.0%</td>" in page
    # config as escaped pretty JSON
    assert "<pre>" in page and "a&lt;b&gt;&amp;c" in page and '"group_size": 8' in page.replace("&quot;", '"')
    assert "<script" not in page and "http" not in page
    assert not list(run.glob("*.tmp"))


def test_rl_only_omits_missing_plots(tmp_path: Path):
    run = tmp_path / "rl_only"
    out = write_report(run, [_rl(s) for s in range(5)], {"x": 1.0})
    page = out.read_text(encoding="utf-8")
    assert _img_srcs(page) == {"reward.png", "length.png", "timing.png"}
    _check_pngs(run, _img_srcs(page))
    assert not (run / "plots" / "accuracy.png").exists() and not (run / "plots" / "sft_loss.png").exists()
    assert "Evaluations" not in page and "Config" not in page


def test_empty_records(tmp_path: Path):
    page = write_report(tmp_path / "empty", [], {}).read_text(encoding="utf-8")
    assert "<img" not in page and "empty" in page


def test_read_metrics_round_trip(tmp_path: Path):
    recs = _records()
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n   \n", encoding="utf-8")
    assert read_metrics(path) == recs


def test_read_metrics_malformed_line(tmp_path: Path):
    path = tmp_path / "bad_metrics.jsonl"
    path.write_text('{"phase": "rl", "step": 0}\n{"phase": "rl", "step": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_metrics\.jsonl.*line 2"):
        read_metrics(path)
