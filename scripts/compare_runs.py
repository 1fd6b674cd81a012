"""Compare the records of two run folders (or two ablation folders, run by run): are they the same run?

    python scripts/compare_runs.py BEFORE AFTER          # e.g. two ablation folders of the same command

For each `metrics.jsonl` found under BEFORE (the folder itself or its sub-folders) and its counterpart under AFTER:
records paired in order, every value compared exactly except timings (`time/*`, `wall_s`); prints the number of
values compared, of differences (the first few shown, with the largest relative one) and keys only AFTER has.
Exit code 1 when a folder is missing or the record counts differ, else 0 (differences are reported, not judged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def compare(a: Path, b: Path) -> dict:
    """Differences between two `metrics.jsonl` files: compared, differences, max_rel, new_keys, shown."""
    ra, rb = _records(a), _records(b)
    out = {"records": (len(ra), len(rb)), "compared": 0, "differences": 0, "max_rel": 0.0, "new_keys": set(),
           "shown": []}
    for x, y in zip(ra, rb, strict=False):
        for k, v in x.items():
            if k.startswith("time/") or k == "wall_s":
                continue
            out["compared"] += 1
            if k not in y or v != y[k]:
                out["differences"] += 1
                if isinstance(v, int | float) and isinstance(y.get(k), int | float):
                    out["max_rel"] = max(out["max_rel"], abs(v - y[k]) / max(abs(v), 1e-12))
                if len(out["shown"]) < 4:
                    out["shown"].append((x.get("phase"), x.get("step"), k, v, y.get(k)))
        out["new_keys"] |= {k for k in y if k not in x}
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__)
        return 2
    a, b = Path(args[0]), Path(args[1])
    files = sorted(p.relative_to(a) for p in a.rglob("metrics.jsonl"))
    if not files:
        print(f"{a}: no metrics.jsonl")
        return 1
    status = 0
    for rel in files:
        if not (b / rel).exists():
            print(f"{rel.parent}: missing in {b}")
            status = 1
            continue
        r = compare(a / rel, b / rel)
        status |= int(r["records"][0] != r["records"][1])
        print(f"{str(rel.parent) or '.'}: records {r['records'][0]} vs {r['records'][1]}, values compared "
              f"{r['compared']}, differences {r['differences']} (largest relative {r['max_rel']:.2g}), "
              f"new keys {sorted(r['new_keys'])}")
        for t in r["shown"]:
            print("    " + str(t)[:200])
    return status


if __name__ == "__main__":
    sys.exit(main())
