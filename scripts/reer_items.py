"""Items for the REER demo (issue 22): arith problems with multi-paragraph worked solutions written from the
sandbox's reference traces (`envs.arith.trace`), plus the answer-only SFT rows and a held-out test set.

    python scripts/reer_items.py --out runs/reer_data --n 60 --n-test 100

writes into `--out`:
    items.jsonl        {"id", "question", "solution" (the worked solution y), "answer"}  → `credo reer` input
    answer_only.jsonl  {"id", "prompt", "answer", "solution": "<answer>\\n{y}\\n</answer>"} → the no-trace SFT baseline
    test.jsonl         {"id", "prompt", "answer"}: held-out problems, disjoint from the items (env.test_files)

    python scripts/reer_items.py --out runs/reer_data --match runs/reer_data/reer.jsonl

writes `answer_only.matched.jsonl`: the answer-only rows of the ids `credo reer` finished (it skips some), so both
SFT runs train on the same problems.

A worked solution has one paragraph per operation, so REER scores every paragraph after the first:

    We evaluate 7*7+7+9 from left to right, one operation at a time.

    First, 7*7 = 49.

    Then, 49+7 = 56.

    Then, 56+9 = 65.

    So the value is \\boxed{65}.

The final value is boxed inside the answer tag, which the `math` verifier reads (`env.verifier=math`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from credo.data import Example
from credo.envs.arith import ArithConfig, ArithEnv, evaluate, expression

QUESTION = "Evaluate {expr} from left to right, ignoring operator precedence. Show your work."


def worked_solution(steps: list[tuple[str, int]]) -> str:
    """The multi-paragraph worked solution of an arith chain (module docstring), one paragraph per operation."""
    values = evaluate(steps)
    paras = [f"We evaluate {expression(steps)} from left to right, one operation at a time."]
    for i, (op, b) in enumerate(steps[1:]):
        paras.append(f"{'First' if i == 0 else 'Then'}, {values[i]}{op}{b} = {values[i + 1]}.")
    paras.append(f"So the value is \\boxed{{{values[-1]}}}.")
    return "\n\n".join(paras)


def rows(examples: list[Example]) -> tuple[list[dict], list[dict], list[dict]]:
    """(REER items, answer-only SFT rows, test rows) of `examples`."""
    items, answer_only, test = [], [], []
    for ex in examples:
        q, y = QUESTION.format(expr=ex.prompt), worked_solution(ex.meta["steps"])
        items.append({"id": ex.id, "question": q, "solution": y, "answer": ex.reference})
        answer_only.append({"id": ex.id, "prompt": q, "answer": ex.reference, "solution": f"<answer>\n{y}\n</answer>"})
        test.append({"id": ex.id, "prompt": q, "answer": ex.reference})
    return items, answer_only, test


def write(path: Path, data: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/reer_data", help="output folder")
    ap.add_argument("--n", type=int, default=60, help="REER items (and answer-only rows)")
    ap.add_argument("--n-test", type=int, default=100, help="held-out test problems")
    ap.add_argument("--depths", default="2,3", help="operations per problem, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--match", help="a `credo reer` output: write answer_only.matched.jsonl with its ids, then stop")
    args = ap.parse_args()
    out = Path(args.out)
    if args.match:
        done = {json.loads(line)["id"] for line in Path(args.match).read_text().splitlines() if line.strip()}
        rows_in = [json.loads(line) for line in (out / "answer_only.jsonl").read_text().splitlines() if line.strip()]
        write(out / "answer_only.matched.jsonl", [r for r in rows_in if r["id"] in done])
        print(f"wrote {sum(r['id'] in done for r in rows_in)} answer-only rows matching {args.match}")
        return
    depths = tuple(int(d) for d in args.depths.split(","))
    env = ArithEnv(ArithConfig(sft_depths=depths, rl_depths=depths, n_sft=args.n, n_train=1, n_test=args.n_test,
                               width=0, seed=args.seed, direct_frac=0.0))
    out.mkdir(parents=True, exist_ok=True)
    items, answer_only, _ = rows(env.examples("sft"))  # sft and test splits are disjoint by construction
    _, _, test = rows(env.examples("test"))
    write(out / "items.jsonl", items)
    write(out / "answer_only.jsonl", answer_only)
    write(out / "test.jsonl", test)
    print(f"wrote {len(items)} items, {len(answer_only)} answer-only rows, {len(test)} test rows to {out}")


if __name__ == "__main__":
    main()
