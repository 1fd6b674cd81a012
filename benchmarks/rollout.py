"""Rollout throughput: credo's native sampler on TinyLM vs Hugging Face `generate` on a same-size Qwen2.

Both decode the same batch (64 prompts × 128 new tokens, temperature 1, no early stop) on the same threads,
side by side in one run. Also reports the sampler's share of this CPU's measured matmul peak (FLOP roofline),
and the speedup over HF that decoding at 100% of that peak would give (the ceiling of `rollout_speedup`).

    python benchmarks/rollout.py [--batch 64] [--new-tokens 128] [--threads 2] [--repeats 3]

Last line: `rollout_speedup=<float>`.
"""

from __future__ import annotations

import argparse
import time

import torch

from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer
from credo.rollout.sampler import SamplingParams, generate


def peak_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput: the roofline's compute ceiling on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def decode_flops(cfg: TinyConfig, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Forward FLOPs of decoding: 2·(matmul params) per token plus attention over the growing context."""
    d, L = cfg.d_model, cfg.n_layers
    per_token_params = L * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    total = 0.0
    for t in range(new_tokens):
        ctx = prompt_len + t + 1
        total += 2 * per_token_params + L * 4 * d * ctx  # QK^T and AV: 2·d·ctx each
    return total * batch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import Qwen2Config, Qwen2ForCausalLM  # the HF side of the race

    tok = CharTokenizer()
    tcfg = TinyConfig(vocab_size=tok.vocab_size, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=256)
    tiny = TinyLM(tcfg).eval()
    hcfg = Qwen2Config(
        vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
    )
    hf = Qwen2ForCausalLM(hcfg).eval()
    n_tiny = sum(p.numel() for p in tiny.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())

    prompts = torch.randint(4, tok.vocab_size, (args.batch, args.prompt_len))
    prompt_lists = [[tok.bos_id, *p.tolist()] for p in prompts]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0)
    g = torch.Generator().manual_seed(0)

    def run_credo() -> None:
        out = generate(tiny, prompt_lists, params, eos_id=-1, pad_id=tok.pad_id, generator=g)
        assert all(len(c.completion_ids) == args.new_tokens for c in out)

    hf_inputs = torch.tensor(prompt_lists)

    def run_hf() -> None:
        with torch.inference_mode():
            out = hf.generate(
                hf_inputs, attention_mask=torch.ones_like(hf_inputs), do_sample=True, temperature=1.0, top_p=1.0,
                top_k=0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=tok.pad_id,
            )
        assert out.shape[1] == hf_inputs.shape[1] + args.new_tokens

    run_credo(), run_hf()  # warm-up
    t_credo = best_of(run_credo, args.repeats)
    t_hf = best_of(run_hf, args.repeats)
    n_tokens = args.batch * args.new_tokens
    peak = peak_gflops(args.threads)
    flops = decode_flops(tcfg, args.batch, args.prompt_len + 1, args.new_tokens)
    achieved = flops / t_credo / 1e9
    print(f"workload: {args.batch} prompts x {args.new_tokens} new tokens, {args.threads} threads")
    print(f"TinyLM ({n_tiny / 1e6:.2f}M params) native sampler: {n_tokens / t_credo:9.0f} tokens/s ({t_credo:.3f} s)")
    print(f"Qwen2  ({n_hf / 1e6:.2f}M params) HF generate:      {n_tokens / t_hf:9.0f} tokens/s ({t_hf:.3f} s)")
    print(f"roofline: measured fp32 matmul peak {peak:.1f} GFLOP/s; sampler achieves {achieved:.2f} GFLOP/s "
          f"= {100 * achieved / peak:.1f}% of peak")
    t_roof = flops / (peak * 1e9)  # the decode's FLOPs at 100% of the peak: no sampler can be faster
    print(f"roofline ceiling: {t_roof:.3f} s at 100% of peak -> rollout_speedup <= {t_hf / t_roof:.1f}")
    print(f"rollout_speedup={t_hf / t_credo:.2f}")


if __name__ == "__main__":
    main()
