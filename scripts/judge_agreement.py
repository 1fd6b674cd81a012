"""How well does the judge agree with the verifier? Before trusting a judge reward (rewards/judge.py), measure it on
a task whose truth is known: responses are scored by the environment's verifier (correct / wrong) and by the judge
(its reward >= `judge.correct_threshold` counts as "correct"), with and without the reference shown to the judge.

    python scripts/judge_agreement.py configs/smollm2_judge.toml --n 100 --k 2 --out runs/judge_agreement.json
    python scripts/judge_agreement.py configs/smollm2_judge.toml --source pairs --n 100   # balanced: reference
                                                                                           # vs a wrong final result

Responses: `--source policy` samples `--k` answers per prompt from the policy (`model.path`, temperature
`eval.temperature`); `--source pairs` uses the sandbox pairs of scripts/make_pairs.py (one correct, one wrong per
prompt). Reported per judge setting: accuracy (share of responses where the judge's verdict equals the
verifier's), Cohen's κ, ROC AUC (threshold-free: how well the judge's reward ranks correct above wrong), the
judge's unscorable share (left out of accuracy, κ and AUC), the base rate of correct responses, and the mean judge
reward of correct and of wrong responses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def cohen_kappa(a: list[bool], b: list[bool]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) of two binary raters; NaN for no items, 1.0 when p_e = 1 and they agree.

    >>> cohen_kappa([True, True, False, False], [True, False, False, False])
    0.5
    """
    n = len(a)
    if n == 0 or n != len(b):
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    if p_e >= 1:
        return 1.0 if p_o == 1 else math.nan
    return (p_o - p_e) / (1 - p_e)


def roc_auc(pos: list[float], neg: list[float]) -> float:
    """P(a correct response's reward > a wrong one's), ties counting 1/2 (the Mann-Whitney form of ROC AUC): how
    well the judge ranks, whatever the threshold; NaN when a side is empty.

    >>> roc_auc([0.9, 0.5], [0.5, 0.1])
    0.875
    """
    if not pos or not neg:
        return math.nan
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def agreement(correct: list[bool], rewards: list[float], threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, κ, ROC AUC, unscorable share, base rate and mean reward by verifier verdict; NaN rewards are
    unscorable."""
    ok = [i for i, r in enumerate(rewards) if math.isfinite(r)]
    truth = [correct[i] for i in ok]
    judged = [rewards[i] >= threshold for i in ok]
    pos = [rewards[i] for i in ok if correct[i]]
    neg = [rewards[i] for i in ok if not correct[i]]
    return {
        "n": float(len(rewards)), "unscorable": (len(rewards) - len(ok)) / max(1, len(rewards)),
        "accuracy": sum(x == y for x, y in zip(truth, judged, strict=True)) / len(ok) if ok else math.nan,
        "kappa": cohen_kappa(truth, judged), "auc": roc_auc(pos, neg), "base_rate": sum(correct) / max(1, len(correct)),
        "judge_says_correct": sum(judged) / len(ok) if ok else math.nan,
        "reward_correct": sum(pos) / len(pos) if pos else math.nan,
        "reward_wrong": sum(neg) / len(neg) if neg else math.nan,
    }


def policy_responses(cfg: Any, examples: list, k: int) -> list[tuple[Any, str]]:
    """`k` sampled answers of the policy (`model.path`) per example."""
    import torch

    from credo.models import load_policy
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator

    policy, tok = load_policy(cfg.model.path, cfg.model)
    policy.eval().requires_grad_(False)
    gen = make_generator(cfg.rollout.backend, policy, tok)
    from credo.envs import make_env

    env = make_env(cfg.env)
    reqs = [GenerationRequest(tok.encode_prompt(env.render_prompt(ex)), n=k) for ex in examples]
    outs = gen.generate(reqs, SamplingParams(cfg.rl.max_new_tokens, cfg.eval.temperature),
                        torch.Generator().manual_seed(cfg.run.seed))
    return [(ex, tok.decode(c.completion_ids.tolist())) for ex, cs in zip(examples, outs, strict=True) for c in cs]


def pair_responses(env: Any, examples: list, seed: int) -> list[tuple[Any, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_pairs import make_pairs

    by_id = {e.id: e for e in examples}
    return [(by_id[p["id"]], p[side]) for p in make_pairs(env, examples, seed) for side in ("chosen", "rejected")]


def main(argv: list[str] | None = None) -> int:
    from credo.envs import make_env
    from credo.envs.runner import run_inline
    from credo.rewards.judge import JudgeItem, load_judge
    from credo.trainer.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--n", type=int, default=100, help="test prompts")
    p.add_argument("--k", type=int, default=2, help="policy answers per prompt (--source policy)")
    p.add_argument("--source", choices=["policy", "pairs"], default="policy")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, args.overrides)
    env = make_env(cfg.env)
    examples = env.examples("test")[: args.n]
    responses = (policy_responses(cfg, examples, args.k) if args.source == "policy"
                 else pair_responses(env, examples, cfg.run.seed))
    correct = [bool(s.correct) for s in run_inline(env.verify, [(t, ex) for ex, t in responses]).scores]
    judge = load_judge(cfg.judge, cfg.model)
    result: dict[str, Any] = {"source": args.source, "judge": cfg.judge.model or cfg.model.path}
    for with_ref in (True, False):
        items = [JudgeItem(env.render_prompt(ex), t, str(ex.reference) if with_ref else None) for ex, t in responses]
        js = judge.judge(items)
        rewards = [j.reward(judge.rubric, cfg.judge.reward, cfg.judge.reward_dimensions) for j in js]
        key = "with_reference" if with_ref else "without_reference"
        result[key] = agreement(correct, rewards, cfg.judge.correct_threshold)
        result[key + "_examples"] = [{"prompt": it.question, "response": it.response, "correct": c,
                                      "critique": j.text, "scores": j.scores, "error": j.error}
                                     for it, j, c in list(zip(items, js, correct, strict=True))[:5]]
        print(key, json.dumps(result[key]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        print(f"judge_agreement: written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
