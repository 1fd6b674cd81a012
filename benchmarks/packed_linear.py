"""Decoding on prepacked weights (`models.packed`: oneDNN's packing, and MKL's where this PyTorch has it) vs plain
`F.linear`, side by side in one run.

1. The products alone, at SmolLM2-135M's shapes (qkv 576→960, up 576→3072, down 1536→576, head 576→49152) and
   decoding's row counts: GFLOP/s of each.
2. A rollout of a random-weight model of SmolLM2-135M's shape (the native engine's `TinyLM`, nothing downloaded):
   `--rows` rows × `--new-tokens` tokens, the same seed, plain vs each packing (a fresh packing counted in, as
   after each weight sync).

    python benchmarks/packed_linear.py [--rows 64] [--new-tokens 64] [--threads 2] [--repeats 2]

Last line: `packed_rollout_speedup=<float>` (the packing `pack` picks on this CPU, `float32_kernel`, over plain),
after `onednn_rollout_speedup=…` and, with MKL, `mkl_rollout_speedup=…`.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
import torch.nn.functional as F

from credo.models import packed as packed_mod
from credo.models.packed import can_pack, float32_kernel, pack
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


def kernels() -> list[str]:
    return ["onednn"] + (["mkl"] if packed_mod._mkl_packer() is not None else [])


def products(rows: list[int]) -> None:
    for M in rows:
        for name, (K, N) in SHAPES.items():
            x, w = torch.randn(M, K), torch.randn(N, K)
            n = max(3, 2000 // M)
            fl = 2 * M * K * N / 1e9
            plain = per_call(lambda x=x, w=w: F.linear(x, w), n)
            line = f"rows {M:3d} {name:5s} {K:5d}x{N:<6d} plain {fl / plain:6.1f}"
            for kernel in kernels():
                lin = pack([w], batch_hint=M, kernel=kernel)
                line += f"   {kernel} {fl / per_call(lambda x=x, w=w, lin=lin: lin.linear(x, w), n):6.1f}"
            print(line + " GFLOP/s")


def rollout(rows: int, new_tokens: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = TinyLM(SMOLLM2).eval().requires_grad_(False)
    prompts = [torch.randint(0, 49152, (68,)).tolist() for _ in range(rows // 8)]
    prompts = [p for p in prompts for _ in range(8)]  # groups of 8 samples, as in RL
    params = SamplingParams(new_tokens, 1.0)

    def run(kernel: str | None) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            with mock.patch.object(packed_mod, "float32_kernel", lambda: kernel):
                with model.packed(rows, new_tokens) if kernel else torch.inference_mode():
                    generate(model, prompts, params, [-1], 0, [], torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - t0)
        return best

    plain = run(None)
    times = {k: run(k) for k in kernels()}
    n = len(prompts) * new_tokens
    print(f"rollout {len(prompts)} rows x {new_tokens} tokens, SmolLM2-135M shape: plain {n / plain:6.1f} tok/s   "
          + "   ".join(f"{k} {n / t:6.1f} tok/s" for k, t in times.items()))
    return {k: plain / t for k, t in times.items()}


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
    speedups = rollout(a.rows, a.new_tokens, a.repeats)
    print(" ".join(f"{k}_rollout_speedup={v:.2f}" for k, v in speedups.items()))
    print(f"packed_rollout_speedup={speedups[float32_kernel()]:.2f}")


if __name__ == "__main__":
    main()
