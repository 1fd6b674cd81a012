"""Preference pairs from a sandbox for PARROT (scripts/parrot.py): per test or train example, the chosen response is
the environment's reference completion (a correct worked answer) and the rejected one the same completion with a
wrong final result (the reference ± a non-zero offset, in the last `=` step and in the answer tag), so the pair
differs only in correctness and the truth is known by construction.

    python scripts/make_pairs.py --out pairs.jsonl --n 150                           # arith sandbox (default)
    python scripts/make_pairs.py configs/smollm2.toml --out pairs.jsonl --n 150      # the smollm2 preset's task

Rows: {"prompt": the rendered prompt, "chosen", "rejected", "reference", "id"}. Examples whose reference is not an
integer are skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any


def wrong_completion(completion: str, reference: int, rng: random.Random) -> str:
    """`completion` with its final result changed to reference + d (d in ±1..±9): the last `=<reference>` and the
    `<answer>` content.

    >>> wrong_completion("then 3+4=7\\n<answer>7</answer>", 7, random.Random(0)) != "then 3+4=7\\n<answer>7</answer>"
    True
    """
    d = rng.choice([k for k in range(-9, 10) if k != 0])
    wrong = str(reference + d)
    ref = str(reference)
    out = re.sub(r"<answer>\s*" + re.escape(ref) + r"\s*</answer>", f"<answer>{wrong}</answer>", completion)
    at = out.rfind("=" + ref)
    if at >= 0:
        out = out[:at] + "=" + wrong + out[at + 1 + len(ref) :]
    return out


def make_pairs(env: Any, examples: list, seed: int = 0) -> list[dict[str, Any]]:
    """One pair per example with an integer reference (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for ex in examples:
        try:
            ref = int(str(ex.reference).strip())
        except ValueError:
            continue
        chosen = env.reference_completion(ex)
        rows.append({"id": ex.id, "prompt": env.render_prompt(ex), "chosen": chosen,
                     "rejected": wrong_completion(chosen, ref, rng), "reference": str(ex.reference)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from credo.envs import make_env
    from credo.trainer.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--split", default="train")
    args = p.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, args.overrides)
    env = make_env(cfg.env)
    rows = make_pairs(env, env.examples(args.split)[: args.n], cfg.run.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"make_pairs: {len(rows)} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
