"""credo's Hugging Face path on a GPU with random weights: SmolLM2-135M's shape and Qwen2-1.5B's shape (1.54B
parameters with the tied embedding, 1.3B without), bf16 compute on fp32 master weights, as `model.dtype=bfloat16`
runs it.

Per shape, in one run:
- rollout tok/s: credo's native backend (bf16 engine) vs HF `generate` on a bf16 copy of the model, the RL step's
  rows (EOS off, every row decodes all its tokens);
- one RL step = rollout + update + weight sync of 16 prompts × 8 samples × 256 new tokens (64-token random
  prompts, random group-normalised rewards; the update recomputes π_old in bf16 first, as credo does below float32,
  then one AdamW step over micro-batches of ≤ `--microbatch-tokens` padded tokens): seconds per stage and the peak
  GPU memory of the step (the first step is warm-up, not counted);
- the update's MFU: model FLOPs (π_old forward 2·N·tokens + forward and backward 6·N·tokens, N the matmul
  parameters, the LM head only on trained tokens; plus causal attention; activation recompute not counted) over
  update seconds × the GPU's dense bf16 peak: the measured matmul peak, and the datasheet peak for known GPUs.

    python benchmarks/hf_gpu.py                 # a CUDA GPU
    python benchmarks/hf_gpu.py --tiny          # a tiny shape on the CPU (CI keeps the script alive)

Last line: `<shape>_rollout_speedup=… <shape>_step_s=… <shape>_peak_gb=… <shape>_mfu=…` for each shape.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {  # transformers configs; vocabularies are the real ones
    "smollm2": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0),
    "qwen2_1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, rope_theta=1000000.0),
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=512),
}
NOMINAL_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # dense, FLOP/s


class IdsTokenizer:
    """What the native backend reads from a tokenizer, for prompts given as ids: no EOS (rows run to the cap)."""

    eos_ids = [-1]
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return []

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return ""


def random_policy(shape: str, device: str, dtype: torch.dtype) -> Any:
    """An `HFPolicy` of the shape with random fp32 weights on `device`, computing in `dtype`, with activation
    checkpointing on (what `load_hf` does for a saved model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from credo.models.hf import HFPolicy

    spec = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(spec.pop("model_type"), tie_word_embeddings=True, max_position_embeddings=4096,
                               **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device)
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.config.use_cache = False
    return HFPolicy(model, native=True, compute_dtype=dtype)


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s in `dtype` (best of 5): the roofline's compute ceiling."""
    n = 8192 if device == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_params(policy: Any) -> tuple[int, int, int]:
    """(body matmul parameters, head parameters V·D, layers × D) of the model."""
    body = sum(m.weight.numel() for n, m in policy.model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    c = policy.model.config
    return body, c.vocab_size * c.hidden_size, c.num_hidden_layers * c.hidden_size


def update_flops(policy: Any, prompt_len: int, new_tokens: int, rows: int) -> float:
    """Model FLOPs of the update: π_old forward (2N) + forward and backward (6N) per token, 8× in all."""
    body, head, ld = matmul_params(policy)
    T = prompt_len + new_tokens
    fwd = rows * (2 * body * T + 2 * head * new_tokens + 2 * ld * T * T)
    return 4 * fwd


def rl_batch(requests: list, outs: list, generator: torch.Generator) -> Any:
    """A trainer `Batch` of the completions, right-padded; random rewards normalised within each group."""
    from credo.data import Batch

    rows = [(r.prompt_ids, c) for r, cs in zip(requests, outs, strict=True) for c in cs]
    B, T = len(rows), max(len(p) + len(c.completion_ids) for p, c in rows)
    ids, mask = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.bool)
    loss_mask, old = torch.zeros(B, T), torch.zeros(B, T)
    for i, (p, c) in enumerate(rows):
        P, C = len(p), len(c.completion_ids)
        ids[i, :P], ids[i, P : P + C] = torch.tensor(p), c.completion_ids.cpu()
        mask[i, : P + C], loss_mask[i, P : P + C] = True, 1.0
        old[i, P : P + C] = c.logprobs.float().cpu()
    G = outs[0].__len__()
    r = torch.rand(B // G, G, generator=generator)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).reshape(B)
    return Batch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask, segment_ids=torch.zeros(B, T).long(),
                 old_logprobs=old, advantages=adv[:, None] * loss_mask, group_ids=torch.arange(B) // G,
                 rewards=torch.zeros(B))


def bench_shape(shape: str, device: str, a: argparse.Namespace) -> dict[str, float]:
    """Rollout race, RL steps and MFU of one shape (module docstring)."""
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator
    from credo.trainer.config import RLConfig
    from credo.trainer.update import policy_update

    dtype = torch.bfloat16
    policy = random_policy(shape, device, dtype)
    gen = make_generator("native", policy, IdsTokenizer())
    g = torch.Generator().manual_seed(0)
    V = policy.model.config.vocab_size
    reqs = [GenerationRequest(torch.randint(1, V, (a.prompt_len,), generator=g).tolist(), n=a.group)
            for _ in range(a.prompts)]
    params = SamplingParams(a.new_tokens, 1.0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.99), fused=device == "cuda" or None)
    cfg = RLConfig(minibatches=1, lr=1e-6, warmup_steps=0, max_new_tokens=a.new_tokens,
                   max_tokens_per_microbatch=a.microbatch_tokens)
    times: list[dict[str, float]] = []
    peak = 0.0
    for step in range(a.steps):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = {}
        _sync(device)
        t0 = time.perf_counter()
        outs = gen.generate(reqs, params, g)
        _sync(device)
        t["rollout"] = time.perf_counter() - t0
        batch = rl_batch(reqs, outs, g)
        policy.train()
        t0 = time.perf_counter()
        policy_update(policy, opt, batch, cfg, g)
        _sync(device)
        t["update"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen.sync_weights(policy)
        _sync(device)
        t["sync"] = time.perf_counter() - t0
        if step > 0 or a.steps == 1:
            times.append(t)
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    mean = {k: sum(t[k] for t in times) / len(times) for k in times[0]}
    rows, n_tok = a.prompts * a.group, a.prompts * a.group * a.new_tokens
    credo_tps = n_tok / mean["rollout"]
    hf_tps = n_tok / _hf_generate_s(policy, reqs, a, device)
    flops = update_flops(policy, a.prompt_len, a.new_tokens, rows)
    measured = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in name), None)
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"{shape} ({n_params / 1e6:.0f}M parameters) on {name}: {a.prompts}x{a.group} rows x {a.new_tokens} tokens")
    print(f"  rollout  credo {credo_tps:9.0f} tok/s   HF generate {hf_tps:9.0f} tok/s   "
          f"ratio {credo_tps / hf_tps:.2f}x")
    print(f"  rl step  {sum(mean.values()):.2f} s (rollout {mean['rollout']:.2f}, update {mean['update']:.2f}, sync "
          f"{mean['sync']:.3f})   peak {'GPU memory' if device == 'cuda' else 'RSS'} {peak:.2f} GB")
    mfu = flops / mean["update"] / measured
    print(f"  update   {flops / mean['update'] / 1e12:.2f} TFLOP/s = {100 * mfu:.0f}% of the measured bf16 matmul peak "
          f"({measured / 1e12:.1f} TFLOP/s)" + (f", {100 * flops / mean['update'] / nominal:.0f}% of the datasheet "
                                                 f"{nominal / 1e12:.0f}" if nominal else ""))
    del gen, policy, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return {f"{shape}_rollout_speedup": credo_tps / hf_tps, f"{shape}_step_s": sum(mean.values()),
            f"{shape}_peak_gb": peak, f"{shape}_mfu": mfu}


def _hf_generate_s(policy: Any, reqs: list, a: argparse.Namespace, device: str) -> float:
    """Seconds of HF `generate` on a bf16 copy of the model, the same rows, best of 2."""
    model = copy.deepcopy(policy.model).to(torch.bfloat16).eval()
    rows = [r.prompt_ids for r in reqs for _ in range(r.n)]
    ids = torch.tensor(rows, device=device)  # all prompts have a.prompt_len tokens: no padding
    best = float("inf")
    for _ in range(2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, pad_token_id=0, use_cache=True)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        assert out.shape[1] == a.prompt_len + a.new_tokens
    del model
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny shape on the CPU, a small workload (CI)")
    ap.add_argument("--shapes", nargs="*", default=None, help=f"of {sorted(SHAPES)} (default: smollm2 qwen2_1.5b)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--microbatch-tokens", type=int, default=16384, help="rl.max_tokens_per_microbatch")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per shape (the first is warm-up)")
    a = ap.parse_args()
    if a.tiny:
        device, shapes = "cpu", ["tiny"]
        a.prompts, a.group, a.new_tokens, a.prompt_len, a.steps, a.microbatch_tokens = 2, 4, 16, 8, 2, 64
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: run with --tiny for the CPU smoke version")
        device, shapes = "cuda", a.shapes or ["smollm2", "qwen2_1.5b"]
    results: dict[str, float] = {}
    for shape in shapes:
        results.update(bench_shape(shape, device, a))
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
