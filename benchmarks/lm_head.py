"""The update's LM head (`trainer.logprobs._HeadLogprob`) on a CPU in float32: vocabulary tiles of
`VOCAB_BLOCK` entries (the default) vs one tile of the whole vocabulary, side by side in one run.

Random weights of SmolLM2-135M's head (V = 49152, D = 576), N hidden states (the benchmark's RL step scores ~3.8k
tokens), chunks of 512 positions as `sequence_logprobs` runs them, entropies on, under `reuse_freed_memory` as the
update runs: seconds of the forward and of the backward pass, alternating the two settings `--rounds` times, the
best of each.

    python benchmarks/lm_head.py [--tokens 3792] [--threads 2] [--rounds 3] [--blocks 4096,8192]

Last line: `lm_head_tile_speedup=<float>` (untiled over tiled forward + backward seconds, the default tile).
"""

from __future__ import annotations

import argparse
import time

import torch

import credo.trainer.logprobs as logprobs
from credo.trainer.host_memory import reuse_freed_memory

V, D, CHUNK = 49152, 576, 512


def timed(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(forward s, backward s) of one pass of the head over `hidden`."""
    with reuse_freed_memory():
        t0 = time.perf_counter()
        lp, _ = logprobs._HeadLogprob.apply(hidden, weight, targets, 1.0, True, torch.float32, CHUNK)
        t1 = time.perf_counter()
        torch.autograd.grad(lp.sum(), (hidden, weight))
        return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=3792)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", default="", help="extra tile widths to time, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, D, generator=g).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g) * 0.05).requires_grad_(True)
    targets = torch.randint(0, V, (args.tokens,), generator=g)
    default = logprobs.VOCAB_BLOCK
    widths = [default, V] + [int(b) for b in args.blocks.split(",") if b]
    best: dict[int, tuple[float, float]] = {}
    try:
        timed(hidden, weight, targets)  # warm-up: packing code paths, allocator
        for _ in range(args.rounds):
            for b in widths:
                logprobs.VOCAB_BLOCK = b
                f, bw = timed(hidden, weight, targets)
                old = best.get(b, (float("inf"), float("inf")))
                best[b] = (min(old[0], f), min(old[1], bw))
    finally:
        logprobs.VOCAB_BLOCK = default
    for b, (f, bw) in best.items():
        name = "one tile (untiled)" if b == V else f"tiles of {b}"
        print(f"LM head {args.tokens} x {D} -> {V}, {name:>20}: forward {f:6.3f} s  backward {bw:6.3f} s  "
              f"total {f + bw:6.3f} s")
    print(f"lm_head_tile_speedup={sum(best[V]) / sum(best[default]):.2f}")


if __name__ == "__main__":
    main()
