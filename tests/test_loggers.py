"""trainer.metrics sinks: run.loggers = jsonl / tensorboard / wandb behind one `MultiSink`."""

from __future__ import annotations

import json
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from credo.trainer.config import ConfigError, load_config
from credo.trainer.metrics import LOGGERS, MultiSink, WandbSink, make_sink, scalars

SAMPLES = [{"prompt": "1+1=?", "completion": "<answer>2</answer>", "reward": 1.0, "correct": True}]
RECORDS = [
    {"phase": "sft", "step": 1, "sft/loss": 2.5},
    {"phase": "eval", "step": 0, "eval/greedy_acc": 0.25, "eval/samples": SAMPLES},
    {"phase": "rl", "step": 1, "reward/mean": 0.25, "time/step": 1.5},
    {"phase": "rl", "step": 2, "reward/mean": 0.75, "time/step": 1.0},
    {"phase": "eval", "step": 2, "eval/greedy_acc": 0.5, "eval/samples": SAMPLES},
]


def _tb(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _points(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_keep_numbers_only():
    rec = {"phase": "rl", "step": 4, "a/x": 1, "a/y": 0.5, "flag": False, "s": "text", "l": [1.0], "d": {"k": 1}}
    assert scalars(rec) == {"a/x": 1.0, "a/y": 0.5, "flag": 0.0}


def test_tensorboard_events_written_and_read_back(tmp_path):
    sink = make_sink(tmp_path, ["jsonl", "tensorboard"])
    for r in RECORDS:
        sink.log(r)
    sink.close()
    acc = _tb(tmp_path / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {"sft/loss", "eval/greedy_acc", "reward/mean", "time/step"}
    assert _points(acc, "reward/mean") == [(1, 0.25), (2, 0.75)]
    assert _points(acc, "eval/greedy_acc") == [(0, 0.25), (2, 0.5)]
    assert _points(acc, "sft/loss") == [(1, 2.5)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == RECORDS  # the JSONL keeps strings and the sample lists
    assert sink.records == RECORDS


def test_resume_rewrites_tensorboard_from_the_history(tmp_path):
    first = make_sink(tmp_path, ["tensorboard"])
    for r in RECORDS[:4]:  # steps 1 and 2 logged, the checkpoint was at step 1, then a crash
        first.log(r)
    first.close()
    history = RECORDS[:3]
    resumed = make_sink(tmp_path, ["tensorboard"], records=history)
    resumed.log({"phase": "rl", "step": 2, "reward/mean": 0.5, "time/step": 1.0})  # step 2 done again
    resumed.close()
    acc = _tb(tmp_path / "tensorboard")
    assert _points(acc, "reward/mean") == [(1, 0.25), (2, 0.5)]  # no stale step 2 = 0.75
    assert resumed.records == [*history, {"phase": "rl", "step": 2, "reward/mean": 0.5, "time/step": 1.0}]


def test_multisink_keeps_records_with_no_sink(tmp_path):
    sink = make_sink(tmp_path, [], records=RECORDS[:1])
    sink.log(RECORDS[1])
    sink.close()
    assert isinstance(sink, MultiSink) and sink.sinks == [] and sink.records == RECORDS[:2]
    assert list(tmp_path.iterdir()) == []


def test_unknown_logger_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="csv"):
        make_sink(tmp_path, ["jsonl", "csv"])
    with pytest.raises(ConfigError, match="run.loggers"):
        load_config(None, ['run.loggers=["jsonl", "csv"]'])
    assert load_config(None, ['run.loggers=["jsonl", "tensorboard", "wandb"]']).run.loggers == list(LOGGERS)


def test_wandb_missing_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        make_sink(tmp_path, ["jsonl", "wandb"])


class _FakeRun:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def define_metric(self, name: str, step_metric: str) -> None:
        self.calls.append(("define", name, step_metric))

    def log(self, values: dict) -> None:
        self.calls.append(("log", values))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_wandb_gets_scalars_on_per_phase_step_axes(tmp_path, monkeypatch):
    run, init_kwargs = _FakeRun(), {}
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: init_kwargs.update(kw) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = make_sink(tmp_path, ["wandb"], records=RECORDS[:2], name="r1", config={"rl": {"lr": 1e-5}})
    sink.log(RECORDS[2])
    sink.close()
    assert init_kwargs == {"project": "credo", "name": "r1", "dir": str(tmp_path), "config": {"rl": {"lr": 1e-5}},
                           "reinit": "create_new"}
    assert run.calls == [
        ("define", "sft/*", "sft_step"), ("log", {"sft/loss": 2.5, "sft_step": 1}),
        ("define", "eval/*", "rl_step"), ("log", {"eval/greedy_acc": 0.25, "rl_step": 0}),
        ("define", "reward/*", "rl_step"), ("define", "time/*", "rl_step"),
        ("log", {"reward/mean": 0.25, "time/step": 1.5, "rl_step": 1}),
        ("finish",),
    ]


def test_real_wandb_offline_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (optional: pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(tmp_path, "offline-test", records=RECORDS)
    sink.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
