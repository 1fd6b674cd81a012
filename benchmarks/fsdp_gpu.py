"""One FSDP2 RL step on one GPU: the data-parallel path (`trainer.distributed`) of a Qwen2-1.5B-shaped random model
(1.54B parameters with the tied embedding, 1.31B without), bf16 compute on fp32 sharded masters, as `torchrun
--nproc-per-node N -m credo train` runs it with N = 1.

What runs: a process group of one rank (NCCL on CUDA, gloo on the CPU); the native engine is built from the
unsharded policy, then the policy is sharded (`shard_policy`: `fully_shard` per decoder layer + the root, FSDP's
MixedPrecisionPolicy bf16 parameters / fp32 reductions on CUDA); each step is rollout (native engine) → update
(`policy_update`: π_old recomputed in bf16, one AdamW step over micro-batches of ≤ `--microbatch-tokens`, DTensor
gradient clipping) → weight sync (each sharded parameter gathered in turn into the engine). Printed: seconds per
stage, peak GPU memory of a step (the first step is warm-up, not counted) and the update's MFU, counted as in
`benchmarks/hf_gpu.py` (model FLOPs over update seconds × the measured bf16 matmul peak, and the datasheet peak for
known GPUs); `hf_gpu.py` gives the same step without FSDP, for comparison.

    python benchmarks/fsdp_gpu.py            # a CUDA GPU
    python benchmarks/fsdp_gpu.py --tiny     # a tiny shape on the CPU with gloo (CI keeps the script alive)

Last line: `fsdp_<shape>_step_s=… fsdp_<shape>_update_s=… fsdp_<shape>_peak_gb=… fsdp_<shape>_mfu=…`.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_gpu import NOMINAL_BF16, IdsTokenizer, _sync, matmul_peak, random_policy, rl_batch, update_flops  # noqa: E402


def _one_rank_group(device: str) -> None:
    """A process group of one rank on a free local port (what torchrun would set up)."""
    from credo.trainer import distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_from_env(device)


def bench(shape: str, device: str, a: argparse.Namespace) -> dict[str, float]:
    """Rollout → FSDP2 update → sync for `a.steps` steps of one shape; returns the last line's numbers."""
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator
    from credo.trainer import distributed as dist
    from credo.trainer.config import RLConfig
    from credo.trainer.update import policy_update

    dtype = torch.bfloat16
    policy = random_policy(shape, device, dtype)
    n_params = sum(p.numel() for p in policy.parameters())
    flops = update_flops(policy, a.prompt_len, a.new_tokens, a.prompts * a.group)  # before sharding: full shapes
    gen = make_generator("native", policy, IdsTokenizer())  # the engine copy, from the unsharded weights
    policy = dist.shard_policy(policy, dtype)
    g = torch.Generator().manual_seed(0)
    V = policy.model.config.vocab_size
    reqs = [GenerationRequest(torch.randint(1, V, (a.prompt_len,), generator=g).tolist(), n=a.group)
            for _ in range(a.prompts)]
    params = SamplingParams(a.new_tokens, 1.0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.99))
    cfg = RLConfig(minibatches=1, lr=1e-6, warmup_steps=0, max_new_tokens=a.new_tokens,
                   max_tokens_per_microbatch=a.microbatch_tokens)
    times: list[dict[str, float]] = []
    peak = 0.0
    for step in range(a.steps):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t: dict[str, float] = {}
        _sync(device)
        t0 = time.perf_counter()
        outs = gen.generate(reqs, params, g)
        _sync(device)
        t["rollout"] = time.perf_counter() - t0
        batch = rl_batch(reqs, outs, g)
        policy.train()
        t0 = time.perf_counter()
        m = policy_update(policy, opt, batch, cfg, g)
        _sync(device)
        t["update"] = time.perf_counter() - t0
        assert m["loss/optimizer_steps"] == 1.0, m
        t0 = time.perf_counter()
        gen.sync_weights(policy)  # each DTensor parameter gathered in turn (models.hf.copy_into_native)
        _sync(device)
        t["sync"] = time.perf_counter() - t0
        if step > 0 or a.steps == 1:
            times.append(t)
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    mean = {k: sum(t[k] for t in times) / len(times) for k in times[0]}
    measured = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in name), None)
    mfu = flops / mean["update"] / measured
    print(f"{shape} ({n_params / 1e6:.0f}M parameters) FSDP2 on 1 rank, {name}: {a.prompts}x{a.group} rows x "
          f"{a.new_tokens} tokens")
    print(f"  rl step  {sum(mean.values()):.2f} s (rollout {mean['rollout']:.2f}, update {mean['update']:.2f}, sync "
          f"{mean['sync']:.3f})   peak {'GPU memory' if device == 'cuda' else 'RSS'} {peak:.2f} GB")
    print(f"  update   {flops / mean['update'] / 1e12:.2f} TFLOP/s = {100 * mfu:.0f}% of the measured bf16 matmul peak "
          f"({measured / 1e12:.1f} TFLOP/s)" + (f", {100 * flops / mean['update'] / nominal:.0f}% of the datasheet "
                                                 f"{nominal / 1e12:.0f}" if nominal else ""))
    return {f"fsdp_{shape}_step_s": sum(mean.values()), f"fsdp_{shape}_update_s": mean["update"],
            f"fsdp_{shape}_peak_gb": peak, f"fsdp_{shape}_mfu": mfu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny shape on the CPU with gloo, a small workload (CI)")
    ap.add_argument("--shape", default="qwen2_1.5b", help="a shape of benchmarks/hf_gpu.py SHAPES")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--microbatch-tokens", type=int, default=16384, help="rl.max_tokens_per_microbatch")
    ap.add_argument("--steps", type=int, default=3, help="RL steps (the first is warm-up)")
    a = ap.parse_args()
    if a.tiny:
        device, a.shape = "cpu", "tiny"
        a.prompts, a.group, a.new_tokens, a.prompt_len, a.steps, a.microbatch_tokens = 2, 4, 16, 8, 2, 64
        torch.set_num_threads(2)
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --tiny for the CPU smoke version")
    else:
        device = "cuda"
    _one_rank_group(device)
    from credo.trainer import distributed as dist

    try:
        results = bench(a.shape, device, a)
    finally:
        dist.close()
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
