"""Start → end held-out accuracy of one or more runs (seeds), with the paired per-problem gain pooled over them.

    python scripts/paired_gain.py runs/smollm2-s0 runs/smollm2-s1 runs/smollm2-s2 [--keys correct,correct@numeric]
    python scripts/paired_gain.py runs/vllm-s0 runs/vllm-s1 --versus runs/native-s0 runs/native-s1

Reads each run's first and last `evals/step_*.jsonl` (written by `credo train` at every evaluation: one row per
held-out problem, in the same order). Prints, per key (a per-problem flag: `correct` is the environment's
format-required verdict, `correct@<verifier>` one of `eval.extra_verifiers`; by default every such flag the runs
hold): each run's start and end accuracy,
their mean ± std over runs, and the pooled paired gain mean(d) ± SE with d = end − start per (run, problem)
(`credo.core.stats.paired_gain`); with samples, pass@k at start and end (Chen et al.'s estimator). `--json`
also writes the numbers. `--start EVAL.json` (from `credo eval … --out`, e.g. of the model before a warm start)
replaces every run's first evaluation as the start. `--versus RUN…`: a second group of runs (another setting, its
own seeds), summarised the same way, then per key the difference of the two groups' per-run gains and of their
end accuracies: mean difference ± Welch SE over seeds and the exact permutation p over seeds
(`credo.core.stats.seed_difference`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from credo.core.stats import paired_gain, pass_at_k, seed_difference


def _evals(run: Path) -> tuple[Path, Path]:
    files = sorted((run / "evals").glob("step_*.jsonl"))
    if len(files) < 2:
        raise SystemExit(f"{run}: needs at least two evaluations in {run / 'evals'}, found {len(files)}")
    return files[0], files[-1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summarize(runs: list[Path], keys: list[str], ks: list[int], start: Path | None = None) -> dict:
    """Per key: each run's start and end accuracy, mean ± std over runs, the pooled paired gain ± SE; pass@k.
    The start is each run's first evaluation (its step), or `start`'s `problems` (step reported as None)."""
    out: dict = {"runs": [str(r) for r in runs], "keys": {}, "start": str(start) if start else "first evaluation"}
    pairs = []  # (run, start step, end step, start rows, end rows)
    for run in runs:
        first, last = _evals(run)
        a, b = _rows(first), _rows(last)
        step0: int | None = int(first.stem[5:])
        if start is not None:
            a, step0 = json.loads(start.read_text())["problems"], None
        if [r["id"] for r in a] != [r["id"] for r in b]:
            raise SystemExit(f"{run}: the start and {last.name} hold different problems")
        pairs.append((run, step0, int(last.stem[5:]), a, b))
    if not keys:  # every verdict field all runs hold: `correct`, `correct@<verifier>` (eval.extra_verifiers)
        keys = [k for k in pairs[0][3][0] if (k == "correct" or k.startswith("correct@"))
                and all(k in a[0] and k in b[0] for _, _, _, a, b in pairs)]
    for key in keys:
        per_run, before, after = [], [], []
        for run, step0, step1, a, b in pairs:
            if key not in a[0] or key not in b[0]:
                raise SystemExit(f"{run}: no per-problem field {key!r} (have: {', '.join(a[0])})")
            x, y = [float(r[key]) for r in a], [float(r[key]) for r in b]
            per_run.append({"run": str(run), "start_step": step0, "end_step": step1,
                            "start": sum(x) / len(x), "end": sum(y) / len(y)})
            before += x
            after += y
        gain, se = paired_gain(before, after)
        starts, ends = [r["start"] for r in per_run], [r["end"] for r in per_run]
        out["keys"][key] = {
            "per_run": per_run, "start_mean": statistics.mean(starts), "end_mean": statistics.mean(ends),
            "start_std": statistics.stdev(starts) if len(starts) > 1 else 0.0,
            "end_std": statistics.stdev(ends) if len(ends) > 1 else 0.0,
            "paired_gain": gain, "paired_se": se, "n_pairs": len(before),
        }
    if all("n_correct" in a[0] and "n_correct" in b[0] for *_, a, b in pairs):  # (on the sampled problems)
        for k in ks:
            vals = {"start": [], "end": []}
            for *_, a, b in pairs:
                for side, rows in (("start", a), ("end", b)):
                    rows = [r for r in rows if "n_correct" in r]  # eval.sample_problems: the first N only
                    if k <= rows[0]["n_samples"]:
                        vals[side].append(statistics.mean(pass_at_k(r["n_samples"], r["n_correct"], k) for r in rows))
            if vals["start"] and vals["end"]:
                out[f"pass@{k}"] = {side: statistics.mean(v) for side, v in vals.items()}
    return out


def _print(res: dict) -> None:
    for key, r in res["keys"].items():
        print(f"{key}:")
        for pr in r["per_run"]:
            where = "start" if pr["start_step"] is None else f"step {pr['start_step']}"
            print(f"  {pr['run']}: {where} {pr['start']:.3f} -> step {pr['end_step']} {pr['end']:.3f}")
        print(f"  mean ± std over {len(r['per_run'])} run(s): {r['start_mean']:.3f} ± {r['start_std']:.3f} -> "
              f"{r['end_mean']:.3f} ± {r['end_std']:.3f}")
        ratio = r["paired_gain"] / r["paired_se"] if r["paired_se"] > 0 else float("inf")
        print(f"  paired gain {r['paired_gain']:+.4f} ± {r['paired_se']:.4f} (SE, {r['n_pairs']} pairs; "
              f"{ratio:.2f} SE)")
    for k in [x for x in res if x.startswith("pass@")]:
        print(f"{k}: {res[k]['start']:.3f} -> {res[k]['end']:.3f} (mean over runs)")


def versus(a: dict, b: dict) -> dict:
    """Per key: group a − group b in per-run gain (end − start) and in end accuracy, over seeds
    (`seed_difference`: mean difference, Welch SE, exact permutation p)."""
    out = {}
    for key in a["keys"]:
        ra, rb = a["keys"][key]["per_run"], b["keys"][key]["per_run"]
        out[key] = {}
        for what, f in (("gain", lambda r: r["end"] - r["start"]), ("end", lambda r: r["end"])):
            d, se, p = seed_difference([f(r) for r in ra], [f(r) for r in rb])
            out[key][what] = {"diff": d, "se": se, "p": p}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--versus", nargs="+", type=Path, help="a second group of runs to compare with")
    p.add_argument("--keys", default="", help="comma-separated per-problem fields (default: every `correct` and "
                   "`correct@<verifier>` field all runs hold)")
    p.add_argument("--pass-k", default="1,4")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--start", type=Path, help="a `credo eval --out` JSON used as every run's start")
    args = p.parse_args(argv)
    keys, ks = [k for k in args.keys.split(",") if k], [int(k) for k in args.pass_k.split(",")]
    res = summarize(args.runs, keys, ks, args.start)
    _print(res)
    if args.versus:
        other = summarize(args.versus, keys, ks, args.start)
        print("--- versus ---")
        _print(other)
        res = {"a": res, "b": other, "a_minus_b": versus(res, other)}
        for key, v in res["a_minus_b"].items():
            for what, x in v.items():
                print(f"{key}: {what} a − b {x['diff']:+.4f} ± {x['se']:.4f} (Welch SE over seeds, "
                      f"{len(args.runs)} vs {len(args.versus)} runs); permutation p {x['p']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
