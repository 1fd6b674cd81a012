"""Local files as an environment: JSONL, parquet or CSV, read through `datasets`.

    credo train env.name=dataset 'env.train_files=["data/train.jsonl"]' 'env.test_files=["data/test.jsonl"]' \\
        env.fields.prompt=question env.fields.answer=final env.verifier=math

(values are TOML: a list of paths is a list of quoted strings, kept from the shell by the outer quotes).

Every row is one problem. `env.fields` maps a credo field to a column (unmapped fields use their own name):

    prompt    required, a non-empty string
    answer    required in train and test files: a non-empty string or a number (what the verifier checks against)
    solution  required in sft files: a non-empty string, the warm-start completion
    id        optional, a string or an integer, unique within a split (default: "<split>-<row number>")

Every column of the row (extra ones included) is kept in `Example.meta["row"]` and can be used in
`env.prompt_template` as `{column}`, besides `{prompt}`; the default template is the prompt plus a line asking for
the answer in `<answer></answer>` tags. The format is chosen by the extension: .jsonl / .ndjson / .json (JSON
Lines), .parquet / .pq, .csv (every CSV column is read as text: "7" stays the string "7").

Splits: test = `env.test_files`, train = `env.train_files`, sft = `env.sft_files`, or, when there are none, the
train rows that have a non-empty solution. Files of a split are concatenated in the listed order and each split
keeps its first `env.n_test` / `env.n_train` / `env.n_sft` rows: all rows unless the number is smaller than the
files (the default n_test is 200: set `env.n_test=0`, meaning all rows, to use a larger test set whole); a cut
split logs a warning naming the file, and rows past the cut are not read.
A solution without an `<answer>` tag gets `\\n<answer>{answer}</answer>` appended when the row has an answer.

A bad record raises `DatasetError` naming the file, the record (the line number for JSONL and CSV, 1-based and
counting the CSV header; the 0-based row index for parquet) and the field. Answers are checked by the verifier
named `env.verifier` (default "math"; see `credo.envs.verifiers`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from credo.data import Example, InputError
from credo.envs.base import Score

FIELDS = ("prompt", "answer", "solution", "id")
FORMATS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
           ".csv": "csv"}
DEFAULT_TEMPLATE = "{prompt}\nGive your final answer in <answer></answer> tags.\n"
DEFAULT_VERIFIER = "math"
log = logging.getLogger(__name__)


class DatasetError(InputError):
    """A bad dataset file, record or mapping; the message names the file, the record and the field."""


def file_format(path: str | Path) -> str:
    """The `datasets` loader for a file, chosen by its extension.

    >>> file_format("data/train.jsonl"), file_format("x.parquet"), file_format("t.CSV")
    ('json', 'parquet', 'csv')
    """
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise DatasetError(f"{path}: unknown extension {ext or '(none)'!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[ext]


def _scan_jsonl(path: Path) -> tuple[list[int], list[set[str]]]:
    """Line number and keys of every record; a malformed line raises naming the file and line."""
    lines, keys = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (a JSON array file? write one object per line)" if n == 1 and line.lstrip()[:1] == "[" else ""
                raise DatasetError(f"{path}: line {n}: malformed JSON: {e.msg} at column {e.colno}{hint}") from None
            if not isinstance(obj, dict):
                hint = " (a JSON array file? write one object per line)" if isinstance(obj, list) else ""
                raise DatasetError(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}{hint}")
            lines.append(n)
            keys.append(set(obj))
    return lines, keys


def _scan_csv(path: Path) -> tuple[list[str], list[int]]:
    """The header and the first line of every record (quoted newlines respected, blank lines skipped)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: empty CSV file (no header line)") from None
        lines, start = [], reader.line_num + 1
        for record in reader:
            if record:
                if len(record) != len(header):
                    raise DatasetError(f"{path}: line {start}: {len(record)} values for {len(header)} columns "
                                       f"({', '.join(header)})")
                lines.append(start)
            start = reader.line_num + 1
    return header, lines


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, Any]], list[str], list[set[str]] | None]:
    """Columns, rows (dicts), where each row is ("line 3" / "row 3 (0-based row index)") and, for JSONL, the
    keys each record really has (`datasets` fills a missing key with None)."""
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    import datasets

    keys: list[set[str]] | None = None
    features = None
    where: list[str] = []
    if fmt == "json":
        lines, keys = _scan_jsonl(path)
        where = [f"line {n}" for n in lines]
    elif fmt == "csv":
        header, lines = _scan_csv(path)
        where = [f"line {n}" for n in lines]
        features = datasets.Features({c: datasets.Value("string") for c in header})  # CSV has no types
    if fmt != "parquet" and not where:
        return [], [], [], keys
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", features=features)
    except Exception as e:  # pyarrow / pandas errors rarely say which file
        raise DatasetError(f"{path}: `datasets` cannot read it as {fmt}: {type(e).__name__}: {e}") from e
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    rows = ds.to_list()
    if fmt == "parquet":
        where = [f"row {i} (0-based row index)" for i in range(len(rows))]
    elif len(where) != len(rows):  # the reader and the scan disagree: fall back to record numbers
        where, keys = [f"record {i + 1}" for i in range(len(rows))], None
    return list(ds.column_names), rows, where, keys


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _check(path: Path, where: str, field: str, col: str, value: Any, present: bool) -> None:
    """Raise naming file, record and field when `value` is not a valid `field`."""
    at = f"{path}: {where}: field {field!r} (column {col!r})"
    if not present:
        raise DatasetError(f"{at}: missing")
    if _is_null(value):
        raise DatasetError(f"{at}: null or empty")
    if field in ("prompt", "solution"):
        if not isinstance(value, str):
            raise DatasetError(f"{at}: expected a string, got {type(value).__name__} {value!r:.60}")
        if not value.strip():
            raise DatasetError(f"{at}: empty string")
    elif field == "answer":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DatasetError(f"{at}: expected a string or a number, got {type(value).__name__} {value!r:.60}")
        if isinstance(value, str) and not value.strip():
            raise DatasetError(f"{at}: empty string")
    elif field == "id" and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise DatasetError(f"{at}: expected a string or an integer, got {type(value).__name__} {value!r:.60}")


class DatasetEnv:
    """Environment over local data files; see the module docstring."""

    name = "dataset"

    def __init__(self, train_files: list[str] | None = None, test_files: list[str] | None = None,
                 sft_files: list[str] | None = None, fields: dict[str, str] | None = None, verifier: str = "",
                 prompt_template: str = "", n_sft: int = 6000, n_train: int = 4000, n_test: int = 200) -> None:
        unknown = set(fields or {}) - set(FIELDS)
        if unknown:
            raise DatasetError(f"dataset env: unknown key(s) {', '.join(sorted(unknown))} in env.fields; "
                               f"credo fields: {', '.join(FIELDS)} (extra columns need no mapping)")
        self.fields = {f: f for f in FIELDS} | dict(fields or {})
        self.explicit = set(fields or {})  # an explicitly mapped column must exist
        self.files = {"train": list(train_files or []), "test": list(test_files or []), "sft": list(sft_files or [])}
        for split, paths in self.files.items():
            for p in paths:
                file_format(p)
                if not Path(p).is_file():
                    raise DatasetError(f"{p}: no such file (env.{split}_files)")
        self.sizes = {"sft": n_sft, "train": n_train, "test": n_test}
        self.template = prompt_template or DEFAULT_TEMPLATE
        from credo.envs.verifiers import get_verifier

        self.verifier_name = verifier or DEFAULT_VERIFIER
        self._verifier = get_verifier(self.verifier_name)
        self._splits: dict[str, list[Example]] = {}

    def _load(self, split: str, paths: list[str], need: tuple[str, ...], only_with: str = "") -> list[Example]:
        """Validated examples of `paths`. `need`: fields every row must have; `only_with`: keep only the rows
        that have this field (and check it there)."""
        col = self.fields
        out: list[Example] = []
        ids: dict[str, str] = {}
        for p in paths:
            path = Path(p)
            columns, rows, where, keys = read_rows(path)
            if not rows:
                continue
            if only_with and col[only_with] not in columns:  # a file without solutions adds no sft rows
                continue
            required = [*need, *((only_with,) if only_with else ()), *(("id",) if "id" in self.explicit else ())]
            for field in required:
                if col[field] not in columns:
                    raise DatasetError(f"{path}: column {col[field]!r} (field {field!r}) not found; columns: "
                                       f"{', '.join(columns)} (map it with env.fields.{field}=<column>)")
            optional = [f for f in ("answer", "id") if f not in need and col[f] in columns]
            for i, row in enumerate(rows):
                present = keys[i] if keys is not None else set(columns)
                has = row.get(col[only_with]) if only_with and col[only_with] in present else None
                if only_with and (_is_null(has) or (isinstance(has, str) and not has.strip())):
                    continue
                for field in (*need, *((only_with,) if only_with else ())):
                    _check(path, where[i], field, col[field], row.get(col[field]), col[field] in present)
                for field in optional:  # checked where given
                    if col[field] in present and not _is_null(row[col[field]]):
                        _check(path, where[i], field, col[field], row[col[field]], True)
                given_id = row.get(col["id"])
                ex_id = f"{split}-{len(out)}" if _is_null(given_id) else str(given_id)
                if ex_id in ids:
                    raise DatasetError(f"{path}: {where[i]}: field 'id' (column {col['id']!r}): duplicate id "
                                       f"{ex_id!r} (first at {ids[ex_id]})")
                ids[ex_id] = f"{path}: {where[i]}"
                answer, solution = row.get(col["answer"]), row.get(col["solution"])
                ex = Example(id=ex_id, prompt=row[col["prompt"]], reference=None if _is_null(answer) else answer,
                             meta={"row": row, "source": f"{path}: {where[i]}",
                                   "solution": solution if isinstance(solution, str) else None},
                             env=self.name)
                try:
                    self.render_prompt(ex)
                except (KeyError, IndexError, ValueError) as e:
                    raise DatasetError(f"{path}: {where[i]}: env.prompt_template {self.template!r} cannot be "
                                       f"filled ({e!r}); keys: prompt, {', '.join(columns)}") from None
                out.append(ex)
                if len(out) == self.sizes[split]:  # n <= 0 never matches: all rows
                    more = i + 1 < len(rows) or p != paths[-1]
                    if more:  # say so: a user's own split cut silently would look whole
                        log.warning("%s: %s split cut at its first %d examples (env.n_%s=%d; 0 keeps all rows)",
                                    path, split, len(out), split, len(out))
                    return out
        return out

    def examples(self, split: str) -> list[Example]:
        if split not in self.sizes:
            raise DatasetError(f"dataset env: unknown split {split!r} (expected sft, train or test)")
        if split not in self._splits:
            if split == "sft" and self.files["sft"]:
                exs = self._load("sft", self.files["sft"], ("prompt", "solution"))
            elif split == "sft":
                exs = self._load("sft", self.files["train"], ("prompt",), only_with="solution")
            else:
                exs = self._load(split, self.files[split], ("prompt", "answer"))
            if not exs:
                src = "env.sft_files, or train rows with a solution" if split == "sft" else f"env.{split}_files"
                hint = " (no warm start: sft.enabled=false, with a pretrained model.path)" if split == "sft" else ""
                raise DatasetError(f"dataset env: the {split} split is empty (from {src}: "
                                   f"{', '.join(self.files[split] or self.files['train']) or 'no files'}){hint}")
            self._splits[split] = exs
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        return self.template.format_map({**example.meta["row"], "prompt": example.prompt})

    def reference_completion(self, example: Example) -> str:
        solution = example.meta.get("solution")
        if not solution:
            raise DatasetError(f"{example.meta.get('source', example.id)}: no solution for the warm start")
        if "<answer>" not in solution and example.reference is not None:
            solution = f"{solution}\n<answer>{example.reference}</answer>"
        return solution

    def verify(self, completion: str, example: Example) -> Score:
        """The verifier's verdict; unscorable (with the reason) when it raises or returns no finite `Score`."""
        from credo.envs.verifiers import call_verifier

        return call_verifier(self._verifier, completion, example.reference, self.verifier_name)


def from_config(cfg) -> DatasetEnv:  # cfg: trainer.config.EnvConfig
    return DatasetEnv(train_files=cfg.train_files, test_files=cfg.test_files, sft_files=cfg.sft_files,
                      fields=cfg.fields, verifier=cfg.verifier, prompt_template=cfg.prompt_template,
                      n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test)
