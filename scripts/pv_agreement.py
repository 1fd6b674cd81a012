"""Perception Verification agreement with the ground truth, per blindfolded reasoner (issue 5, criterion 4).

The analogue of MoCA's "86% agreement with human judgement": sample completions from a scenes policy on the
held-out split (temperature 1, so that right and wrong perceptions both occur), ask each reasoner for R_P from
the perception text alone, and compare R_P with the sandbox's truth:

- `agreement_exact`: R_P = 1 exactly when the claims are exactly the scene's objects (`perception_correct`);
- `agreement_sufficient`: R_P = 1 exactly when the claims determine the right answer (`perception_sufficient`).

Base rates (`exact_rate`, `sufficient_rate`) are printed too: a reasoner that always says 1 agrees with the
truth at that rate, so agreement is only informative above max(rate, 1 - rate).

    python scripts/pv_agreement.py runs/scenes-moca/start_model configs/scenes_moca.toml \
        --reasoners program,policy [--n 200 --samples 4]
"""

from __future__ import annotations

import argparse
import json

import torch

from credo.envs import make_env
from credo.models import load_policy
from credo.rewards.perception import make_reasoner, perception_rewards
from credo.rollout.engine import rollout
from credo.rollout.sampler import SamplingParams
from credo.trainer.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved scenes policy (model directory)")
    ap.add_argument("config", help="the preset, e.g. configs/scenes_moca.toml")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (env.*, model.*)")
    ap.add_argument("--reasoners", default="program,policy", help="comma-separated: program, policy, model:<dir>")
    ap.add_argument("--n", type=int, default=200, help="held-out prompts")
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt (temperature 1)")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"env.n_test={args.n}"])
    torch.set_num_threads(cfg.run.threads)
    policy, tok = load_policy(args.model, cfg.model)
    policy.eval().requires_grad_(False)
    env = make_env(cfg.env)
    examples = env.examples("test")
    by_id = {e.id: e for e in examples}
    g = torch.Generator().manual_seed(cfg.run.seed)
    samples = rollout(policy, tok, env, examples, args.samples, SamplingParams(cfg.rl.max_new_tokens), g)
    texts = [s.text for s in samples]
    exs = [by_id[s.example_id] for s in samples]
    base = {"n_completions": len(samples), **env.sample_metrics(texts, exs)}  # type: ignore[attr-defined]
    print(json.dumps({"completions": base}))
    for spec in args.reasoners.split(","):
        reasoner = make_reasoner(spec, env, policy, tok, cfg.model, cfg.reward.perception_reasoner_tokens)
        _, m = perception_rewards(samples, by_id, env, reasoner, cfg.reward, tok)
        print(json.dumps({"reasoner": spec, "r_p_rate": m["pv/rate"], "agreement_exact": m["pv/agreement"],
                          "agreement_sufficient": m["pv/agreement_sufficient"], "empty": m["pv/empty"],
                          "errors": m["pv/errors"]}))


if __name__ == "__main__":
    main()
