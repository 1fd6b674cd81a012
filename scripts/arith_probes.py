"""Diagnostic probes behind docs/arith-rl-log.md §3 and §5, on the 200 held-out depth-4 problems.

    python scripts/arith_probes.py sft MODEL      # learn depth 4 from ground truth? greedy accuracy every 50 steps
    python scripts/arith_probes.py rft MODEL      # ... from its own correct samples (rejection-sampling fine-tuning)
    python scripts/arith_probes.py choice MODEL   # how often it answers at once, and how well each way goes
    python scripts/arith_probes.py errors MODEL   # where greedy replies first go wrong, and P(right char) there
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from credo.data import collate
from credo.envs.arith import ArithConfig, ArithEnv, trace
from credo.models import load_policy
from credo.rollout.engine import encode_prompt, rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import SFTConfig
from credo.trainer.evaluate import evaluate
from credo.trainer.logprobs import sequence_logprobs
from credo.trainer.sft import lr_at, sft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sft", "rft", "choice", "errors"])
    ap.add_argument("model")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    policy, tok = load_policy(args.model)
    # depth-4 "sft" split (all worked traces), disjoint from the test set
    env = ArithEnv(ArithConfig(sft_depths=(4,), n_sft=4000, direct_frac=0.0))
    test = env.examples("test")

    def acc() -> float:
        return evaluate(policy, tok, env, test, 128, 0, [], 1.0, 0, workers=0)["eval/greedy_acc"]

    if args.mode == "choice":
        return choice(policy, tok, env, test)
    if args.mode == "errors":
        return errors(policy, tok, env, test)
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


def choice(policy, tok, env, test) -> None:
    """Greedy and 8 samples at T = 1 per problem: the share of replies that answer at once (open with
    `<answer>`), and the accuracy of direct and of worked replies."""
    g = torch.Generator().manual_seed(0)
    for name, temperature, k in (("greedy", 0.0, 1), ("T=1", 1.0, 8)):
        samples = rollout(policy, tok, env, test, k, SamplingParams(128, temperature), g)
        direct = [s for s in samples if s.text.lstrip().startswith("<answer>")]
        worked = [s for s in samples if not s.text.lstrip().startswith("<answer>")]

        def acc(xs: list) -> float:
            return sum(env.verify(s.text, test[s.group_id]).value >= 1 for s in xs) / max(1, len(xs))

        print(f"{name}: accuracy {acc(samples):.3f}, replies direct {len(direct) / len(samples):.3f}, "
              f"accuracy direct {acc(direct):.3f}, worked {acc(worked):.3f}")


def errors(policy, tok, env, test) -> None:
    """For each wrong greedy reply: is its first wrong line (the step checker's) wrong in the result or in the
    operands, on which line, and what probability the model gives the right character where the reply first
    leaves the reference trace."""
    samples = rollout(policy, tok, env, test, 1, SamplingParams(128, 0.0), torch.Generator().manual_seed(0))
    kinds: Counter = Counter()
    lines: Counter = Counter()
    p_right = []
    for s in samples:
        ex = test[s.group_id]
        if env.verify(s.text, ex).value >= 1:
            continue
        ref = trace(ex.meta["steps"])
        span = env.first_error(s.text, ex)
        if span is not None:
            i = s.text[: span[0]].count("\n")
            got, want = s.text[span[0] : span[1]].strip(), (ref.split("\n") + [""])[i]
            same_lhs = "=" in got and "=" in want and got.split("=")[0] == want.split("=")[0]
            kinds["result" if same_lhs else "operands or form"] += 1
            lines[i + 1] += 1
        k = next((j for j in range(min(len(ref), len(s.text))) if ref[j] != s.text[j]), min(len(ref), len(s.text)))
        if k < len(ref):
            ids = encode_prompt(tok, env, ex) + tok.encode(ref[:k])
            with torch.no_grad():
                p = policy(torch.tensor([ids]))[0, -1].softmax(-1)
            p_right.append(float(p[tok.encode(ref[k])[0]]))
    q = torch.tensor(p_right).quantile(torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
    print(f"wrong greedy replies: {sum(kinds.values())}; first wrong line is wrong in: {dict(kinds)}; "
          f"on line: {dict(sorted(lines.items()))}")
    print("P(right character) at the first divergence, 10/25/50/75/90th percentiles:", [round(x, 3) for x in q],
          f"share above 0.2: {sum(x > 0.2 for x in p_right) / max(1, len(p_right)):.3f}")


if __name__ == "__main__":
    main()
