"""credo vs the Hugging Face stack on one tiny Qwen2: rollout (credo sampler vs `generate`) and a whole RL
step (`credo train` vs TRL `GRPOTrainer`), side by side in one run, same model, same workload.

Workload: 8 prompts × 8 generations × 64 new tokens (arith depth-4 prompts through the chat template),
AdamW lr 1e-6, no KL, one optimizer step per RL step, temperature 1. The model is a random-initialised
Qwen2 of TinyLM's size (hidden 128, 4 layers, GQA 4/2, vocab ~500) written with `save_pretrained`.

    pip install -e ".[hf,bench]"      # TRL is needed only here
    python benchmarks/trl_race.py [--steps 6] [--threads 2]

Rollout part: both decode the same 64 rows to exactly 64 new tokens (EOS disabled), best of 3.
Step part: the first step of each is warm-up and is not counted; the rest are averaged.
Last line: `rollout_speedup=<float> step_speedup=<float>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rollout import best_of  # benchmarks/rollout.py, beside this script

N_PROMPTS, GROUP, NEW_TOKENS, LR = 8, 8, 64, 1e-6


def rollout_race(model_dir: Path, prompts: list[str]) -> tuple[float, float]:
    """Tokens/s of credo's sampler and of `generate` on the same rows."""
    from credo.models.hf import load_hf
    from credo.rollout.native import NativeGenerator
    from credo.rollout.sampler import SamplingParams, generate

    policy, tok = load_hf(model_dir)
    policy.eval()
    decoder = NativeGenerator(policy, tok).decoder  # the native engine (Qwen2 is Llama-family); EOS off below
    rows = [tok.encode_prompt(p) for p in prompts for _ in range(GROUP)]
    g = torch.Generator().manual_seed(0)
    credo_s = best_of(lambda: generate(decoder, rows, SamplingParams(NEW_TOKENS, 1.0), [-1], tok.pad_id, generator=g),
                      repeats=3)
    P = max(map(len, rows))
    ids = torch.full((len(rows), P), tok.pad_id)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        mask[i, P - len(r):] = 1

    def hf() -> None:
        with torch.inference_mode():
            out = policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                        temperature=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                        pad_token_id=tok.pad_id)
        assert out.shape[1] == P + NEW_TOKENS

    hf_s = best_of(hf, repeats=3)
    n = len(rows) * NEW_TOKENS
    return n / credo_s, n / hf_s


def credo_steps(model_dir: Path, out: Path, steps: int, threads: int) -> list[dict]:
    """Run `credo train` on the model (no eval in between) and return the RL step records."""
    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    cfg = load_config(None, [
        f"model.path={model_dir}", f"run.out_dir={out}", "run.name=credo", f"run.threads={threads}",
        "run.progress=false", f"rl.steps={steps}", f"rl.prompts_per_step={N_PROMPTS}", f"rl.group_size={GROUP}",
        f"rl.max_new_tokens={NEW_TOKENS}", "rl.minibatches=1", f"rl.lr={LR}", "rl.warmup_steps=0",
        f"eval.every={steps + 1}", "env.n_test=8", "eval.n_samples=1", "eval.pass_k=[1]",
    ])
    train(cfg)
    lines = (out / "credo" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == "rl"]


def trl_steps(model_dir: Path, out: Path, steps: int, prompts: list[str], refs: list[int]) -> list[float]:
    """Seconds per `GRPOTrainer` step on the same model and workload."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from credo.envs.verifiers.answer_tag import verify_integer

    def reward(completions, reference, **_):
        return [verify_integer(c[0]["content"], r).value for c, r in zip(completions, reference, strict=True)]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    n = N_PROMPTS * steps
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": prompts[i % len(prompts)]}],
                               "reference": refs[i % len(refs)]} for i in range(n)])
    args = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=N_PROMPTS * GROUP, num_generations=GROUP,
        gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, learning_rate=LR, beta=0.0,
        num_iterations=1, max_steps=steps, temperature=1.0, top_p=1.0, top_k=0, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, shuffle_dataset=False,
    )
    clock = Clock()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=reward, args=args, train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[clock],
    )
    trainer.train()
    return clock.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from credo.envs.arith import ArithConfig, ArithEnv
    from credo.models.tiny_hf import make_tiny_hf

    env = ArithEnv(ArithConfig(n_train=64, n_test=8, n_sft=8))
    examples = env.examples("train")
    prompts = [env.render_prompt(e) for e in examples[:N_PROMPTS]]
    refs = [e.reference for e in examples[:N_PROMPTS]]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_dir = make_tiny_hf(out / "qwen2", arch="qwen2", hidden_size=128, num_layers=4, num_heads=4,
                                 num_kv_heads=2, intermediate_size=512)
        credo_tps, hf_tps = rollout_race(model_dir, prompts)
        print(f"rollout  credo sampler {credo_tps:9.0f} tok/s   HF generate {hf_tps:9.0f} tok/s   "
              f"ratio {credo_tps / hf_tps:.2f}x   ({N_PROMPTS * GROUP} rows x {NEW_TOKENS} tokens)")

        records = credo_steps(model_dir, out, args.steps, args.threads)[1:]
        trl_times = trl_steps(model_dir, out, args.steps, prompts, refs)[1:]
        credo_step = statistics.mean(r["time/step"] for r in records)
        trl_step = statistics.mean(trl_times)
        stages = ["rollout", "reward", "advantage", "update"]
        print(f"rl step  credo {credo_step:.3f} s   TRL GRPOTrainer {trl_step:.3f} s   "
              f"ratio {trl_step / credo_step:.2f}x   (mean of {len(records)} / {len(trl_times)} steps after a warm-up)")
        print("credo step breakdown: " + "  ".join(
            f"{s} {statistics.mean(r.get(f'time/{s}', 0.0) for r in records):.3f}s" for s in stages)
            + "  logprobs 0.000s (old log-probs are the sampler's; the update's forward is inside update)")
        print(f"rollout_speedup={credo_tps / hf_tps:.2f} step_speedup={trl_step / credo_step:.2f}")


if __name__ == "__main__":
    main()
