"""`credo reer`'s files and driver: validated (question, good answer) rows in, one resumable JSONL row per item
out, in the form `credo sft` reads; the search itself is `trainer.reer` (REER, arXiv 2509.06160).

    credo reer items.jsonl --out reer.jsonl --generator smollm2-135m-instruct

Input: JSON Lines `{"question": str, "solution": str, "id"?: str | int, "answer"?: ...}` (`prompt` is accepted
for question; y is the solution's part after `</think>` when it has one). Output: per finished item
`{"id", "prompt", "answer"?, "solution": "<think>\\n{z*}\\n</think>\\n<answer>\\n{y}\\n</answer>", "reer": {...}}`;
skipped items go to `<out>.skipped.jsonl`. A rerun skips the ids already in either file.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from credo.envs.dataset import DatasetError
from credo.rollout.backend import Generator
from credo.trainer.reer import ReerJob, ReerResult, search_batch
from credo.trainer.reer_parts import PolicyScorer, ReerConfig, Scorer, good_answer, sft_solution


@dataclass
class Item:
    """One input row: `id` (the row's, else "line-<n>"), the question, the good answer y, the final answer."""

    id: str
    line: int
    question: str
    answer: str  # y (after `</think>` when the solution has one)
    final: Any = None  # the row's `answer` column (what a verifier checks), carried to the output


def read_items(path: str | Path) -> list[Item]:
    """The rows of a JSONL file of `{"question": str, "solution": str, "id"?: str | int, "answer"?: ...}` (aliases:
    `prompt` for question; released files are JSON lists of such objects: convert them to lines). Raises
    `envs.dataset.DatasetError` naming the file, the line and the field for a malformed line, a missing or
    empty field, a wrong type or a repeated id; FileNotFoundError for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    items: list[Item] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                items.append(_item(path, n, raw, seen))
    return items


def _item(path: Path, n: int, raw: str, seen: dict[str, int]) -> Item:
    at = f"{path}: line {n}"
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{at}: malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{at}: expected a JSON object, got {type(row).__name__}")
    key = "question" if "question" in row else "prompt" if "prompt" in row else "question"
    for name in (key, "solution"):
        value = row.get(name)
        if name not in row:
            raise DatasetError(f"{at}: field {name!r}: missing")
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{at}: field {name!r}: expected a non-empty string, got {value!r:.60}")
    rid = row.get("id", f"line-{n}")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise DatasetError(f"{at}: field 'id': expected a string or an integer, got {rid!r:.60}")
    rid = str(rid)
    if rid in seen:
        raise DatasetError(f"{at}: field 'id': {rid!r} repeats line {seen[rid]}")
    seen[rid] = n
    y = good_answer(row["solution"])
    if not y:
        raise DatasetError(f"{at}: field 'solution': empty after '</think>'")
    return Item(rid, n, row[key].strip(), y, row.get("answer"))


def skipped_path(out: str | Path) -> Path:
    """Where skipped items are recorded: `<out>.skipped.jsonl` beside the output."""
    out = Path(out)
    return out.with_name(out.name + ".skipped.jsonl")


def done_rows(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of an output file (none when it does not exist). A last line cut by an interrupted write
    (no newline, or not JSON) is truncated away so the next append starts on a clean line."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no newline")
            rows.append(json.loads(line))
        except ValueError:
            break
        good += len(line)
    if good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single `write` on an O_APPEND descriptor, then fsync: a crash leaves at most
    a cut last line, which `done_rows` removes."""
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def output_row(item: Item, res: ReerResult, seconds: float) -> dict[str, Any]:
    """The row written for `item`: `credo sft`'s fields (id, prompt, answer when known, solution) for a finished
    item, and under "reer" the search's record (`ReerResult` without the trajectory) and its wall time."""
    meta = {k: v for k, v in asdict(res).items() if k != "trajectory"} | {"seconds": round(seconds, 3)}
    row: dict[str, Any] = {"id": item.id, "prompt": item.question}
    if item.final is not None:
        row["answer"] = item.final
    if res.status == "done":
        row["solution"] = sft_solution(res.trajectory, item.answer)
    return row | {"reer": meta}


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Over finished rows: count, mean and quartiles of the score before and after, share below the threshold,
    mean accepted rewrites and mean seconds per item."""
    done = [r["reer"] for r in rows if r.get("reer", {}).get("status") == "done"]
    out: dict[str, float] = {"n": float(len(done))}
    if not done:
        return out
    for key in ("score_before", "score_after"):
        v = torch.tensor([d[key] for d in done], dtype=torch.float64)
        q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        out |= {f"{key}_mean": float(v.mean()), f"{key}_q25": q[0], f"{key}_median": q[1], f"{key}_q75": q[2]}
    out["reached_threshold"] = sum(d["reached_threshold"] for d in done) / len(done)
    out["accepted_mean"] = sum(d["accepted"] for d in done) / len(done)
    out["seconds_mean"] = sum(d["seconds"] for d in done) / len(done)
    return out


def run_reer(input_path: str | Path, out: str | Path, gen: Generator, scorer: Scorer, cfg: ReerConfig,
             limit: int = 0, progress: bool = True,
             on_item: Callable[[Item, ReerResult], None] | None = None, batch: int = 8) -> dict[str, float]:
    """`credo reer`: search every input row not yet in `out` (or in `skipped_path(out)`), `batch` items at a time in
    lockstep (`reer.search_batch`: one generation batch and one scoring call per stage), appending one row per
    item as its batch finishes (`output_row`; "seconds" is the batch's wall time over its items), so an interrupted
    run resumes where it stopped; `limit` > 0 caps the items of this call. Each item's randomness comes from
    `cfg.seed` and its line number, so a resumed or differently batched run draws what an uninterrupted one would
    (up to floating-point rounding of the batch). Returns `summarize` over all finished rows of `out`. Input errors
    raise before any model runs (`read_items`); `batch` < 1 raises ValueError."""
    from tqdm import tqdm

    if batch < 1:
        raise ValueError(f"reer batch must be >= 1, got {batch}")
    items = read_items(input_path)
    done = {str(r.get("id")) for r in done_rows(out) + done_rows(skipped_path(out))}
    todo = [it for it in items if it.id not in done]
    todo = todo[:limit] if limit > 0 else todo
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="reer", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), batch):
        chunk, t0 = todo[start : start + batch], time.perf_counter()
        jobs = [ReerJob(it.question, it.answer, torch.Generator().manual_seed(cfg.seed * 1_000_003 + it.line),
                        random.Random(f"reer/{cfg.seed}/{it.line}")) for it in chunk]
        results = search_batch(gen, scorer, jobs, cfg)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for item, res in zip(chunk, results, strict=True):
            append_row(out if res.status == "done" else skipped_path(out), output_row(item, res, seconds))
            if on_item is not None:
                on_item(item, res)
        bar.update(len(chunk))
        summary = summarize(done_rows(out))
        if "score_after_mean" in summary:
            bar.set_postfix(before=f"{summary['score_before_mean']:.3f}", after=f"{summary['score_after_mean']:.3f}",
                            reached=f"{summary['reached_threshold']:.2f}")
    bar.close()
    return summarize(done_rows(out))


def load_models(generator: str, scorer: str = "", dtype: str = "float32", device: str = "cpu",
                backend: str = "native") -> tuple[Generator, Scorer]:
    """The generation backend on the model `generator` and a `PolicyScorer` on `scorer` (a saved model directory
    or a `models.hub` name; "" or the same path: the generator's model, loaded once)."""
    from credo.models import load_policy
    from credo.rollout.backend import make_generator
    from credo.trainer.config import ModelConfig

    mcfg = ModelConfig(path=generator, dtype=dtype, device=device, gradient_checkpointing=False)
    policy, tok = load_policy(generator, mcfg)
    gen = make_generator(backend, policy, tok)
    if scorer and scorer != generator:
        policy, tok = load_policy(scorer, ModelConfig(path=scorer, dtype=dtype, device=device,
                                                      gradient_checkpointing=False))
    return gen, PolicyScorer(policy, tok)


def reer_from_files(input_path: str | Path, out: str | Path, generator: str, scorer: str = "",
                    cfg: ReerConfig | None = None, limit: int = 0, dtype: str = "float32", device: str = "cpu",
                    backend: str = "native", threads: int = 0, progress: bool = True,
                    batch: int = 8) -> dict[str, float]:
    """`credo reer`: check the input (a bad row raises `DatasetError` before any model loads), load the generator
    and the scorer (`load_models`), then `run_reer`. `threads` > 0 sets torch's CPU threads."""
    read_items(input_path)
    if threads > 0:
        torch.set_num_threads(threads)
    gen, sc = load_models(generator, scorer, dtype, device, backend)
    return run_reer(input_path, out, gen, sc, cfg or ReerConfig(), limit, progress, batch=batch)


__all__ = ["Item", "append_row", "done_rows", "load_models", "output_row", "read_items", "reer_from_files", "run_reer",
           "skipped_path", "summarize"]
