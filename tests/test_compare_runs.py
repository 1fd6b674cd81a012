"""scripts/compare_runs.py: two run folders compared record by record, timings left out."""

import json
from pathlib import Path


def _write(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_differences_counted_timings_ignored(load_script, tmp_path, capsys):
    rec = {"phase": "rl", "step": 1, "loss/policy": 0.5, "time/step": 3.0}
    _write(tmp_path / "a" / "grpo-s0", [rec, {**rec, "step": 2}])
    _write(tmp_path / "b" / "grpo-s0", [{**rec, "time/step": 9.0, "time/sync": 0.1},
                                        {**rec, "step": 2, "loss/policy": 0.5001}])
    assert load_script("compare_runs").main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "values compared 6, differences 1 (largest relative 0.0002)" in out and "['time/sync']" in out


def test_missing_run_or_count_mismatch_fails(load_script, tmp_path):
    _write(tmp_path / "a" / "x", [{"step": 1}])
    _write(tmp_path / "a" / "y", [{"step": 1}])
    _write(tmp_path / "b" / "x", [{"step": 1}, {"step": 2}])
    assert load_script("compare_runs").main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
