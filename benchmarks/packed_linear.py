"""Decoding on prepacked oneDNN weights (`models.packed`) vs plain `F.linear`, side by side in one run.

1. The products alone, at SmolLM2-135M's shapes (qkv 576→960, up 576→3072, down 1536→576, head 576→49152) and
   decoding's row counts: GFLOP/s of each.
2. A rollout of a random-weight model of SmolLM2-135M's shape (the native engine's `TinyLM`, nothing downloaded):
   `--rows` rows × `--new-tokens` tokens, the same seed, plain vs packed (the packing, ~0.3 s, counted in).

    python benchmarks/packed_linear.py [--rows 64] [--new-tokens 64] [--threads 2] [--repeats 2]

Last line: `packed_rollout_speedup=<float>`.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from credo.models.packed import can_pack, pack
from credo.models.tiny import TinyConfig, TinyLM
from credo.rollout.sampler import SamplingParams, generate

SMOLLM2 = TinyConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536, max_len=2048,
                     mlp="swiglu", tie_embeddings=True)
SHAPES = {"qkv": (576, 960), "up": (576, 3072), "down": (1536, 576), "head": (576, 49152)}


def per_call(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def products(rows: list[int]) -> None:
    for M in rows:
        for name, (K, N) in SHAPES.items():
            x, w = torch.randn(M, K), torch.randn(N, K)
            lin = pack([w], batch_hint=M)
            n = max(3, 2000 // M)
            plain = per_call(lambda x=x, w=w: F.linear(x, w), n)
            packed = per_call(lambda x=x, w=w, lin=lin: lin.linear(x, w), n)
            fl = 2 * M * K * N / 1e9
            print(f"rows {M:3d} {name:5s} {K:5d}x{N:<6d} plain {fl / plain:6.1f} GFLOP/s   packed {fl / packed:6.1f} "
                  f"GFLOP/s   {plain / packed:.2f}x")


def rollout(rows: int, new_tokens: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = TinyLM(SMOLLM2).eval().requires_grad_(False)
    prompts = [torch.randint(0, 49152, (68,)).tolist() for _ in range(rows // 8)]
    prompts = [p for p in prompts for _ in range(8)]  # groups of 8 samples, as in RL
    params = SamplingParams(new_tokens, 1.0)

    def run(packed: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ctx = model.packed(rows, new_tokens) if packed else torch.inference_mode()
            with ctx:
                generate(model, prompts, params, [-1], 0, [], torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - t0)
        return best

    plain, packed = run(False), run(True)
    n = len(prompts) * new_tokens
    print(f"rollout {len(prompts)} rows x {new_tokens} tokens, SmolLM2-135M shape: plain {n / plain:6.1f} tok/s   "
          f"packed {n / packed:6.1f} tok/s")
    return plain / packed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.rows < 8 or a.rows % 8:
        ap.error("--rows must be a multiple of 8 (groups of 8 samples)")
    torch.set_num_threads(a.threads)
    if not can_pack(torch.zeros(1)):
        raise SystemExit("this PyTorch build cannot pack float32 weights with oneDNN")
    products(sorted({1, 8, a.rows}))
    print(f"packed_rollout_speedup={rollout(a.rows, a.new_tokens, a.repeats):.2f}")


if __name__ == "__main__":
    main()
