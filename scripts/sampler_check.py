"""Does each rollout backend sample from the policy's distribution? `rollout.sampler_check` (the martingale z of
every sampled token against the trainer's softmax(logits / T), top-p nucleus) on a config's training prompts, the
way the RL loop samples them (`rl.prompts_per_step` prompts × `rl.group_size` × `rl.max_new_tokens`, `rl.temperature`,
`rl.top_p`), for each backend in turn, on the same model.

    python scripts/sampler_check.py configs/smollm2.toml --model runs/<run>/start_model --backends vllm,native \\
        [--prompts 32] [--seed 0]

`--model`: a transformers directory (default: the config's `model.path`); vLLM sides need the environment with
vLLM (`.venv-vllm`). Prints one line per backend: z (≈ N(0, 1) for an exact sampler; |z| > 4 is a sampler that
does not draw from the distribution the trainer computes), tokens, tokens outside the nucleus, the rollout's and
the check's seconds.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backends", default="vllm,native")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from credo.envs import make_env
    from credo.models.hf import load_hf
    from credo.models.hub import resolve
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator
    from credo.rollout.engine import encode_prompt
    from credo.rollout.sampler_check import sampler_check
    from credo.trainer.config import load_config

    cfg = load_config(a.config)
    torch.set_num_threads(cfg.run.threads)
    env = make_env(cfg.env)
    policy, tok = load_hf(a.model or resolve(cfg.model.path), gradient_checkpointing=False)
    policy.eval()
    prompts = [encode_prompt(tok, env, e) for e in env.examples("train")[: a.prompts]]
    params = SamplingParams(cfg.rl.max_new_tokens, cfg.rl.temperature, cfg.rl.top_p)
    for name in a.backends.split(","):
        gen = make_generator(name, policy, tok, max_batch=256)
        t0 = time.perf_counter()
        outs = gen.generate([GenerationRequest(p, n=cfg.rl.group_size) for p in prompts], params,
                            torch.Generator().manual_seed(a.seed))
        t1 = time.perf_counter()
        r = sampler_check(policy, prompts, outs, params.temperature, params.top_p)
        print(f"{name:7s} z {r.z:+.2f} over {r.tokens} sampled tokens ({len(prompts)} prompts × {cfg.rl.group_size}), "
              f"{r.outside} outside the nucleus, mean v_t {r.mean_var:.3f}; rollout {t1 - t0:.1f} s, check "
              f"{time.perf_counter() - t1:.1f} s", flush=True)


if __name__ == "__main__":
    main()
