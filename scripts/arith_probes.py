"""Diagnostic probes behind docs/arith-rl-log.md §3: can the warm-started model learn depth 4 from ground truth
(SFT) and from its own correct samples (RFT)? Greedy held-out accuracy every 50 steps.

    python scripts/arith_probes.py sft runs/arith-grpo/start_model
    python scripts/arith_probes.py rft runs/arith-grpo/start_model
"""

from __future__ import annotations

import argparse

import torch

from credo.data import collate
from credo.envs.arith import ArithConfig, ArithEnv
from credo.models import load_policy
from credo.rollout.engine import rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import SFTConfig
from credo.trainer.evaluate import evaluate
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.sft import lr_at, sft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sft", "rft"])
    ap.add_argument("model")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    policy, tok = load_policy(args.model)
    env = ArithEnv(ArithConfig(sft_depths=(4,), n_sft=4000))  # depth-4 "sft" split, disjoint from the test set
    test = env.examples("test")

    def acc() -> float:
        return evaluate(policy, tok, env, test, 128, 0, [], 1.0, 0, workers=0)["eval/greedy_acc"]

    print("start", acc(), flush=True)
    if args.mode == "sft":
        for chunk in range(args.steps // 50):
            sft(policy, tok, env, SFTConfig(steps=50, batch_size=64, lr=args.lr, warmup=5), seed=chunk)
            print((chunk + 1) * 50, acc(), flush=True)
        return
    g = torch.Generator().manual_seed(0)
    train = env.examples("train")[:1200]
    policy.eval()
    samples = rollout(policy, tok, env, train, 8, SamplingParams(128, 1.0), g)
    good = [s for s in samples if env.verify(s.text, train[s.group_id]).value >= 1]
    print(f"correct samples {len(good)} of {len(samples)}", flush=True)
    cfg = SFTConfig(steps=args.steps, batch_size=64, lr=args.lr, warmup=5)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    policy.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(0, len(good), (64,), generator=g).tolist()
        batch = collate([good[i] for i in idx], tok.pad_id)
        lp, _ = sequence_logprobs(policy, batch.input_ids)
        loss = -(lp * batch.loss_mask).sum() / batch.loss_mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            print(step + 1, f"loss {loss.item():.4f}", acc(), flush=True)


if __name__ == "__main__":
    main()
