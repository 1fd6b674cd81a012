"""Generate–Critique–Refine (RationalRewards' test-time loop, arXiv 2604.11626; methods.md §7.4): improve answers
without changing parameters.

    round 0:  a_0 = policy(q)                                  the task as the environment renders it
    round k:  (critique_k−1, q_k) = judge(q, a_k−1)            the judge, without the reference, critiques the last
              a_k = policy(q_k)                                answer and writes `## Refined Request:` q_k
    every round: accuracy (the environment's verifier on a_k against the example's reference) and the judge's
    score of a_k (the judge's reward, `rewards.judge`), on the original task q.

The judge sees the original task q in every round (the score of every round is a score on the same task, so the
rounds compare); it never sees the reference (at test time there is none). When its output has no refined
request, the next round asks the previous request again (counted: `refined_missing`). The policy decodes greedily;
the judge at `judge.refine_temperature` (released loop: 0.1). Departures: the released loop refines image-generation
prompts (the generator is a diffusion model); here the policy is a language model and the request a text task.
`keep_task` (`judge.refine_keep_task`, not released, off by default): the next request is the original task q
followed by the judge's refined request instead of the refined request alone — for judges that rewrite a request
into a hint and lose the task (SmolLM2-135M writes "Please provide a more detailed and precise explanation.").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from credo.data import Example
from credo.envs.runner import run_inline
from credo.rewards.judge import Judge, JudgeItem
from credo.rollout.backend import GenerationRequest, SamplingParams, as_generator


def _answers(gen: Any, tok: Any, requests: list[str], examples: list[Example], max_new_tokens: int) -> list[str]:
    """The policy's greedy answer to each request text (with the example's images, when it has some)."""
    reqs = []
    for text, ex in zip(requests, examples, strict=True):
        ids = tok.encode_prompt(text)
        if ex.images and hasattr(tok, "with_images"):
            ids = tok.with_images(ids, len(ex.images))
        reqs.append(GenerationRequest(ids, images=ex.images))
    outs = gen.generate(reqs, SamplingParams(max_new_tokens, temperature=0.0)) if reqs else []
    return [tok.decode(o[0].completion_ids.tolist()) for o in outs]


def refine(policy_gen: Any, policy_tok: Any, judge: Judge, env: Any, examples: list[Example], rounds: int = 2,
           max_new_tokens: int = 128, formula: str = "mean", keep_task: bool = False) -> dict[str, Any]:
    """Run the loop for `rounds` refinement rounds (answers of rounds 0..rounds) on `examples`.

    Returns {"rounds": [{round, accuracy, judge_score (mean reward over scorable judgements, NaN when none),
    judge_unscorable (share), refined_missing (share of examples whose judge wrote no refined request for the
    next round; 0 in the last round)}], "examples": [{id, reference, rounds: [{request, answer, correct,
    critique, scores, reward, error, refined_request}]}]}. Raises ValueError for rounds < 0."""
    if rounds < 0:
        raise ValueError(f"refine: rounds must be >= 0, got {rounds}")
    gen = as_generator(policy_gen, policy_tok)
    questions = [env.render_prompt(ex) for ex in examples]
    requests = list(questions)
    per_example: list[dict[str, Any]] = [{"id": ex.id, "reference": str(ex.reference), "rounds": []}
                                         for ex in examples]
    summary = []
    for k in range(rounds + 1):
        answers = _answers(gen, policy_tok, requests, examples, max_new_tokens)
        verdicts = run_inline(env.verify, list(zip(answers, examples, strict=True))).scores
        last = k == rounds
        js = judge.judge([JudgeItem(q, a, None, ex.images) for q, a, ex in zip(questions, answers, examples,
                                                                              strict=True)], refine=not last)
        rewards = [j.reward(judge.rubric, formula) for j in js]
        missing = 0
        for i, (ex_rec, j) in enumerate(zip(per_example, js, strict=True)):
            ex_rec["rounds"].append({"request": requests[i], "answer": answers[i], "correct": bool(verdicts[i].correct),
                                     "critique": j.text, "scores": j.scores,
                                     "reward": rewards[i] if math.isfinite(rewards[i]) else None,
                                     "error": j.error, "refined_request": None if last else j.refined_request})
            if not last:
                missing += j.refined_request is None
                if j.refined_request:
                    requests[i] = f"{questions[i].rstrip()}\n{j.refined_request}" if keep_task else j.refined_request
        ok = [r for r in rewards if math.isfinite(r)]
        n = max(1, len(examples))
        summary.append({"round": k, "accuracy": sum(bool(v.correct) for v in verdicts) / n,
                        "judge_score": sum(ok) / len(ok) if ok else math.nan,
                        "judge_unscorable": (len(rewards) - len(ok)) / n, "refined_missing": missing / n})
    return {"rounds": summary, "examples": per_example}


def markdown(result: dict[str, Any], shown: int = 3) -> str:
    """A short report: the per-round table, then the rounds of the first `shown` examples (requests, answers,
    critiques)."""
    lines = ["# Generate–Critique–Refine", "", "| round | accuracy | judge score | judge unscorable | "
             "no refined request |", "|---|---|---|---|---|"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['accuracy']:.3f} | {r['judge_score']:.3f} | {r['judge_unscorable']:.3f} "
                     f"| {r['refined_missing']:.3f} |")
    for ex in result["examples"][:shown]:
        lines += ["", f"## {ex['id']} (reference: {ex['reference']})"]
        for k, rd in enumerate(ex["rounds"]):
            verdict = "correct" if rd["correct"] else "wrong"
            score = "unscorable: " + rd["error"] if rd["reward"] is None else f"judge {rd['reward']:.3f}"
            lines += ["", f"### round {k}: {verdict}, {score}", "", "Request:", "", _quote(rd["request"]), "",
                      "Answer:", "", _quote(rd["answer"]), "", "Critique:", "", _quote(rd["critique"])]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def _finite(x: Any) -> Any:
    """`x` with NaN / infinite floats as None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_outputs(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """`out` (a .json path; NaN written as null) and the markdown report beside it (same name, .md); returns both
    paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(result), indent=1))
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    return out, md


def refine_from_config(cfg: Any, model: str = "", n: int = 50, rounds: int | None = None) -> dict[str, Any]:
    """`credo refine`: the policy at `model` (or `model.path`), the judge of `[judge]` at
    `judge.refine_temperature`, the first `n` test examples of the environment, `judge.refine_rounds` rounds
    unless `rounds` is given. Raises ValueError without a policy model."""
    import copy

    from credo.envs import make_env
    from credo.models import load_policy
    from credo.rewards.judge import load_judge
    from credo.rollout.backend import make_generator

    path = model or cfg.model.path
    if not path:
        raise ValueError("credo refine needs a policy: --model or model.path")
    torch.set_num_threads(cfg.run.threads)
    env = make_env(cfg.env)
    policy, tok = load_policy(path, cfg.model)
    policy.eval().requires_grad_(False)
    gen = make_generator(cfg.rollout.backend, policy, tok)
    jc = copy.deepcopy(cfg.judge)
    jc.temperature = jc.refine_temperature
    judge = load_judge(jc, cfg.model)
    examples = env.examples("test")[:n]
    return refine(gen, tok, judge, env, examples, jc.refine_rounds if rounds is None else rounds,
                  cfg.rl.max_new_tokens, jc.reward, jc.refine_keep_task)


__all__ = ["markdown", "refine", "refine_from_config", "write_outputs"]
