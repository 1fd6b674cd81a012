"""Metric sinks and named stage timers. Functions return metrics; the loop logs them here."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


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


def format_line(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A short console line with the chosen keys that are present."""
    parts = [f"{k.split('/')[-1]}={record[k]:.3g}" for k in keys if isinstance(record.get(k), int | float)]
    return f"[{record.get('phase', '')} {record.get('step', '')}] " + " ".join(parts)
