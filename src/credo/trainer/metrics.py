"""Metric sinks and named stage timers. Functions return metrics; the loop logs them here.

`make_sink(run_dir, cfg.run.loggers, …)` gives one `MultiSink` over the chosen loggers, like TRL's `report_to` and
verl's `trainer.logger`: "jsonl" (every record, strings and lists included: the run report reads it), "tensorboard"
(event files in `run_dir/tensorboard`, through `torch.utils.tensorboard`, which needs the `tensorboard` package) and
"wandb" (Weights & Biases, imported only when chosen; `WANDB_MODE=offline` writes under `run_dir/wandb` with no
network). TensorBoard and W&B receive the numbers of each record only.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

LOGGERS = ("jsonl", "tensorboard", "wandb")  # the names `run.loggers` accepts


class Timers:
    """`with timers("rollout"): ...` accumulates seconds under `time/rollout` until `pop()`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{name}"] = self.seconds.get(f"time/{name}", 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class JsonlSink:
    """Appends one JSON object per record to `path` (flushed per record)."""

    def __init__(self, path: str | Path, records: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = list(records or [])
        # (re)write what we already have, so a resumed run's file equals the checkpoint's history
        with open(self.path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        self._f: TextIO = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Sink(Protocol):
    """Where the loop's records go: `log(record)` once per record, `close()` at the end."""

    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (ints, floats and bools as float; NaN kept), without `step`: what TensorBoard and
    W&B receive. Strings (`phase`), lists (`eval/samples`) and other values are left out.

    >>> scalars({"phase": "eval", "step": 3, "eval/greedy_acc": 0.5, "eval/samples": [{"prompt": "1+1"}], "ok": True})
    {'eval/greedy_acc': 0.5, 'ok': 1.0}
    """
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float)}


class TensorBoardSink:
    """Each record's `scalars` as TensorBoard scalars, tag = key (e.g. `reward/mean`), global step = the record's
    `step` (SFT and RL steps share the axis; their keys differ). `torch.utils.tensorboard.SummaryWriter` writes the
    events (it needs the `tensorboard` package, not torchvision). `log_dir` is emptied first and `records` (the
    history of a resumed run) written again, so the events equal the JSONL file's records."""

    def __init__(self, log_dir: str | Path, records: list[dict[str, Any]] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch raises ImportError naming tensorboard when it is missing
            raise ImportError('run.loggers has "tensorboard" but the tensorboard package is not installed: '
                              'pip install -e ".[log]" (or pip install tensorboard)') from e
        shutil.rmtree(log_dir, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))
        for r in records or []:
            self.log(r)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Each record's `scalars` to a Weights & Biases run (`wandb.init(project, name, dir=run_dir, config)`).
    W&B's own step only grows, so the record's step is logged as a metric of its own and made the x axis:
    `sft_step` for the warm start's records, `rl_step` for the others (`define_metric`). A resumed run starts a
    new W&B run and logs `records` (the history) again. Offline (`WANDB_MODE=offline`) it needs no network;
    `wandb sync <run_dir>/wandb/offline-run-*` uploads later. Raises `ImportError` when wandb is not installed."""

    def __init__(self, run_dir: str | Path, name: str, project: str = "credo", config: dict[str, Any] | None = None,
                 records: list[dict[str, Any]] | None = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError('run.loggers has "wandb" but the wandb package is not installed: pip install wandb '
                              "(WANDB_MODE=offline runs without network)") from e
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config, reinit="create_new")
        self.defined: set[str] = set()
        for r in records or []:
            self.log(r)

    def log(self, record: dict[str, Any]) -> None:
        axis = "sft_step" if record.get("phase") == "sft" else "rl_step"
        values = scalars(record)
        for k in values:
            group = f"{k.split('/')[0]}/*" if "/" in k else k
            if group not in self.defined:
                self.defined.add(group)
                self.run.define_metric(group, step_metric=axis)
        self.run.log({**values, axis: int(record.get("step", 0))})

    def close(self) -> None:
        self.run.finish()


class MultiSink:
    """Fans each record out to several sinks and keeps them all in `records` (the checkpoint's history and the
    report's input), whichever sinks are chosen."""

    def __init__(self, sinks: list[Sink], records: list[dict[str, Any]] | None = None) -> None:
        self.sinks = sinks
        self.records: list[dict[str, Any]] = list(records or [])

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_sink(run_dir: str | Path, loggers: list[str] | tuple[str, ...] = ("jsonl",),
              records: list[dict[str, Any]] | None = None, name: str | None = None,
              config: dict[str, Any] | None = None) -> MultiSink:
    """The sinks of `run.loggers` (names from `LOGGERS`) under `run_dir`: `metrics.jsonl`, `tensorboard/`,
    `wandb/` (W&B run name `name`, default the folder's name; `config` its config). `records` is the history of
    a resumed run: every sink starts from it. Raises `ValueError` for an unknown name and `ImportError` (with the
    install command) when the package of a chosen logger is missing."""
    run_dir = Path(run_dir)
    unknown = [x for x in loggers if x not in LOGGERS]
    if unknown:
        raise ValueError(f"run.loggers: unknown {unknown}; choose from {list(LOGGERS)}")
    sinks: list[Sink] = []
    try:
        if "jsonl" in loggers:
            sinks.append(JsonlSink(run_dir / "metrics.jsonl", records))
        if "tensorboard" in loggers:
            sinks.append(TensorBoardSink(run_dir / "tensorboard", records))
        if "wandb" in loggers:
            sinks.append(WandbSink(run_dir, name or run_dir.resolve().name, config=config, records=records))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return MultiSink(sinks, records)


def format_line(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A short console line with the chosen keys that are present."""
    parts = [f"{k.split('/')[-1]}={record[k]:.3g}" for k in keys if isinstance(record.get(k), int | float)]
    return f"[{record.get('phase', '')} {record.get('step', '')}] " + " ".join(parts)
