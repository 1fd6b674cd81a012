"""Held-out evaluation: greedy accuracy, unbiased pass@k and mean response length; with tools (multi-turn
rollouts) or with tools forbidden, and tool-use metrics."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from credo.core.stats import maj_at_k, pass_at_k_batch
from credo.data import Example, Sample
from credo.envs.base import Environment, sample_metrics
from credo.envs.runner import VerifyRunner
from credo.envs.tools import TOOLS, Tool
from credo.envs.verifiers.answer_tag import extract_answer
from credo.rollout.backend import Generator, SamplingParams, as_generator
from credo.rollout.engine import rollout
from credo.rollout.multiturn import CALL_END, multiturn_rollout
from credo.trainer.config import RewardConfig
from credo.trainer.host_memory import reuse_freed_memory

SHOWN_SAMPLES = 4  # greedy completions per evaluation kept under `eval/samples` for the run report


@dataclass
class ToolEval:
    """Evaluate with multi-turn rollouts (`rollout.multiturn`): the tools the policy may call, the turn and image
    limits, and whether tools are allowed at all.

    `enabled = False` is evaluation with tools FORBIDDEN, done the way an agent framework (verl-tool, a TRL
    environment) answers a call it will not run: generation still stops at `</tool_call>`, the call is not
    executed, the policy gets the observation `Execution error:\ntools are disabled\n` (loss-free, as every
    observation) and continues, up to `max_turns` turns, so it can still answer from what it sees. Accuracy is
    then the model's accuracy without tool results; `eval/tool_attempt_rate` says how often it tried."""

    tools: dict[str, Tool]
    max_turns: int = 4
    max_images: int = 16
    enabled: bool = True


def tool_eval_from_config(cfg: Any, enabled: bool = True) -> ToolEval | None:
    """The `ToolEval` of a run's config (`rl.multiturn`, `rl.tools`, `rl.max_turns`, `rl.max_images`), or None
    (single-turn evaluation) when `rl.multiturn` is off."""
    if not cfg.rl.multiturn:
        return None
    return ToolEval({name: TOOLS[name] for name in cfg.rl.tools}, cfg.rl.max_turns, cfg.rl.max_images, enabled)


def tool_eval_metrics(samples: list, correct: list[bool]) -> dict[str, float]:
    """Tool use of evaluation trajectories: `eval/tool_call_rate` (share with ≥ 1 valid call),
    `eval/tool_attempt_rate` (share that wrote a `</tool_call>`, valid, malformed or refused),
    `eval/calls_per_rollout`, `eval/tool_errors_per_rollout` (malformed / failed calls), and
    `eval/acc_with_tool` / `eval/acc_without_tool`: accuracy of the trajectories with ≥ 1 valid call and of the
    others (NaN when that group is empty)."""
    n = max(1, len(samples))
    used = [ok for s, ok in zip(samples, correct, strict=True) if s.n_tool_calls > 0]
    unused = [ok for s, ok in zip(samples, correct, strict=True) if s.n_tool_calls == 0]
    return {
        "eval/tool_call_rate": len(used) / n,
        "eval/tool_attempt_rate": sum(CALL_END in s.text for s in samples) / n,
        "eval/calls_per_rollout": sum(s.n_tool_calls for s in samples) / n,
        "eval/tool_errors_per_rollout": sum(s.n_tool_errors for s in samples) / n,
        "eval/acc_with_tool": sum(used) / len(used) if used else math.nan,
        "eval/acc_without_tool": sum(unused) / len(unused) if unused else math.nan,
    }


def evaluate(
    generator: Generator | Any,
    tokenizer: Any,
    env: Environment,
    examples: list[Example],
    max_new_tokens: int,
    n_samples: int,
    pass_k: list[int],
    temperature: float,
    seed: int,
    runner: VerifyRunner | None = None,
    workers: int = RewardConfig.workers,
    timeout_s: float = RewardConfig.timeout_s,
    tools: ToolEval | None = None,
    extra_verifiers: tuple[str, ...] = (),
    problems: list[dict[str, Any]] | None = None,
    sample_problems: int = 0,
) -> dict[str, Any]:
    """Greedy accuracy over `examples`, and pass@k (Chen et al. estimator) and maj@k (`core.stats.maj_at_k`)
    from `n_samples` samples each (of the first `sample_problems` examples only, when > 0). Votes group samples
    by their extracted answer (`env.answer_key(text)` when the env has one, else the last `<answer>` tag's text);
    a sample with no answer is a vote of its own.

    Answers are checked by `env.verify` (never by `reward.function`: accuracy is the environment's verdict)
    through `runner`, or through a runner with `workers` processes and `timeout_s` per item made for this
    evaluation and closed at its end (the env must be picklable when `workers > 0`). A verification that raises
    or times out counts as wrong and is reported in `eval/verify_errors` / `eval/verify_timeouts`.

    With `tools` (a `ToolEval`, e.g. `tool_eval_from_config(cfg)` when `rl.multiturn` is on) every rollout,
    greedy and sampled, is multi-turn with those tools (or with tools forbidden, `tools.enabled = False`), each
    turn capped at `max_new_tokens`, and the greedy trajectories' tool use is reported (`tool_eval_metrics`:
    `eval/tool_call_rate`, `eval/acc_with_tool`, `eval/acc_without_tool`, …; `eval/tools_enabled` says which
    mode). Without `tools`, single-turn rollouts: a call the policy writes is plain text and never executed.

    `extra_verifiers` (`eval.extra_verifiers`, names of `envs.verifiers.VERIFIERS` or import paths) also score the
    greedy completions against the examples' references: `eval/greedy_acc@<name>` (e.g. `numeric`, which reads the
    last number when there is no answer tag: a format-free accuracy beside the format-required one).

    All values are floats except `eval/samples`: the first `SHOWN_SAMPLES` greedy trajectories (`eval_samples`).

    `problems`, when a list, receives one dict per example, in order (what verl writes with
    `validation_data_dir`): `id`, `completion` (greedy), `correct`, `correct@<name>` per extra verifier and, with
    samples, `n_correct` of `n_samples`; paired comparisons of two evaluations read these (`scripts/paired_gain.py`).

    `generator` is the run's generation backend (`rollout.backend`; a bare model is wrapped by `as_generator`).
    """
    own = runner is None
    if runner is None:  # started before the rollouts, so the workers' start-up overlaps with generation
        runner = VerifyRunner(env.verify, workers=workers, timeout_s=timeout_s)
    roll = functools.partial(_rollouts, as_generator(generator, tokenizer), tokenizer, env)
    try:
        greedy = roll(examples, tools, 1, SamplingParams(max_new_tokens, temperature=0.0))
        verdicts = runner.run([(s.scored_text, ex) for s, ex in zip(greedy, examples, strict=True)])
        errors, timeouts = verdicts.errors, verdicts.timeouts
        out = {
            "eval/greedy_acc": sum(bool(v.correct) for v in verdicts.scores) / len(examples),
            "eval/response_len": sum(len(s.completion_ids) for s in greedy) / len(greedy),
        }
        out.update({f"eval/{k}": v for k, v in sample_metrics(env, [s.text for s in greedy], examples).items()})
        out["eval/samples"] = eval_samples(env, examples, greedy, verdicts.scores)
        extra = extra_accuracy(greedy, examples, extra_verifiers, problems is not None)
        (problems if problems is not None else []).extend(_problem_rows(examples, greedy, verdicts.scores, extra))
        out.update(extra)
        if tools is not None:
            out["eval/tools_enabled"] = float(tools.enabled)
            out.update(tool_eval_metrics(greedy, [bool(v.correct) for v in verdicts.scores]))
        if n_samples > 0 and pass_k:
            subset = examples[:sample_problems] if sample_problems > 0 else examples
            params = SamplingParams(max_new_tokens, temperature=temperature)
            sampled = roll(subset, tools, n_samples, params, torch.Generator().manual_seed(seed))
            verdicts = runner.run([(s.scored_text, subset[i // n_samples]) for i, s in enumerate(sampled)])
            errors, timeouts = errors + verdicts.errors, timeouts + verdicts.timeouts
            out.update(_sampled_rows(env, sampled, verdicts.scores, n_samples, pass_k, problems))
        out["eval/verify_errors"] = float(errors)
        out["eval/verify_timeouts"] = float(timeouts)
    finally:
        if own:
            runner.close()
    return out


def _sampled_rows(env: Environment, sampled: list, scores: list, n_samples: int, pass_k: list[int],
                  problems: list[dict[str, Any]] | None) -> dict[str, float]:
    """`sampled_metrics` of `n_samples` samples per problem of a prefix of the held-out set, plus its size
    (`eval/sampled_problems`); each of those problems' rows in `problems` gets `n_correct` and `n_samples`."""
    hits = [bool(v.correct) for v in scores]
    out = sampled_metrics(env, sampled, hits, n_samples, pass_k)
    out["eval/sampled_problems"] = float(len(hits) // n_samples)
    for i, row in enumerate((problems or [])[: len(hits) // n_samples]):
        row["n_correct"], row["n_samples"] = sum(hits[i * n_samples : (i + 1) * n_samples]), n_samples
    return out


def _problem_rows(examples: list[Example], greedy: list, scores: list, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """`evaluate`'s per-problem rows: id, greedy completion, the env's verdict, and `correct@<name>` from the
    `problems@<name>` lists of `extra_accuracy` (popped from `extra`, which keeps only the accuracies)."""
    rows = [{"id": ex.id, "completion": s.text, "correct": bool(v.correct)}
            for ex, s, v in zip(examples, greedy, scores, strict=True)]
    for key in [k for k in extra if k.startswith("problems@")]:
        for row, ok in zip(rows, extra.pop(key), strict=True):
            row["correct@" + key.removeprefix("problems@")] = ok
    return rows


def _rollouts(gen: Generator, tokenizer: Any, env: Environment, examples: list[Example], tools: ToolEval | None,
              group: int, params: SamplingParams, g: torch.Generator | None = None) -> list[Sample]:
    """`group` rollouts per example through `gen`: multi-turn with `tools` when given, else single-turn. The
    decoding's transient buffers reuse heap memory, handed back after (`trainer.host_memory`), as the rollouts'."""
    with reuse_freed_memory():
        if tools is None:
            return rollout(gen, tokenizer, env, examples, group, params, g)
        return multiturn_rollout(gen, tokenizer, env, examples, group, params, g, tools.max_turns, tools.max_images,
                                 tools.tools, tools_enabled=tools.enabled)[0]


def sampled_metrics(env: Environment, sampled: list, correct: list[bool], n_samples: int,
                    pass_k: list[int]) -> dict[str, float]:
    """`eval/pass@k` (Chen et al.'s unbiased estimator, `core.stats.pass_at_k_batch`) and `eval/maj@k`
    (`core.stats.maj_at_k`) from `n_samples` consecutive samples per example and their verdicts."""
    n_examples = len(sampled) // n_samples
    hits = torch.tensor(correct).view(n_examples, n_samples)  # [N, n]
    n_correct = hits.sum(1)
    answer_of = getattr(env, "answer_key", extract_answer)
    votes = [_vote_classes([answer_of(s.text) for s in sampled[i * n_samples : (i + 1) * n_samples]],
                           hits[i].tolist()) for i in range(n_examples)]
    out = {}
    for k in pass_k:
        if k <= n_samples:
            out[f"eval/pass@{k}"] = float(pass_at_k_batch(n_correct, n_samples, k).mean())
            out[f"eval/maj@{k}"] = sum(maj_at_k(c, ok, k) for c, ok in votes) / n_examples
    return out


def extra_accuracy(samples: list, examples: list[Example], names: tuple[str, ...] | list[str],
                   per_problem: bool = False) -> dict[str, Any]:
    """`eval/greedy_acc@<name>`: the share of `samples` (one per example, same order) that verifier `name`
    (`envs.verifiers.get_verifier`) judges correct against the example's reference; unscorable counts as wrong.
    With `per_problem`, also `problems@<name>`: the per-example verdicts (list of bool)."""
    from credo.envs.runner import run_inline
    from credo.envs.verifiers import get_verifier

    out = {}
    for name in names:
        verdicts = run_inline(get_verifier(name), [(s.scored_text, ex.reference) for s, ex in zip(samples, examples,
                                                                                                   strict=True)])
        flags = [bool(v.correct) for v in verdicts.scores]
        out[f"eval/greedy_acc@{name}"] = sum(flags) / max(1, len(samples))
        if per_problem:
            out[f"problems@{name}"] = flags
    return out


def eval_samples(env: Environment, examples: list[Example], samples: list, scores: list, k: int = SHOWN_SAMPLES,
                 max_chars: int = 2000) -> list[dict[str, Any]]:
    """What the run report shows of an evaluation: the first `k` examples' rendered prompt, greedy completion
    (clipped to `max_chars`), verifier reward (`Score.value`; None when unscorable) and `Score.correct`.

    >>> from credo.data import Score
    >>> class Env:
    ...     def render_prompt(self, ex): return ex.prompt
    >>> class S:
    ...     text = "<answer>4</answer>"
    >>> eval_samples(Env(), [Example("a", "2+2?", 4)], [S()], [Score(1.0)])
    [{'prompt': '2+2?', 'completion': '<answer>4</answer>', 'reward': 1.0, 'correct': True}]
    """
    return [{"prompt": env.render_prompt(ex)[:max_chars], "completion": s.text[:max_chars],
             "reward": float(v.value) if v.scorable else None, "correct": bool(v.correct)}
            for ex, s, v in list(zip(examples, samples, scores, strict=True))[:k]]


def _vote_classes(answers: list[str | None], correct: list[bool]) -> tuple[list[int], list[bool]]:
    """Answer classes of one problem's samples: counts and whether each class is right (any of its samples
    verified). Samples without an answer each form their own class, so they never win a vote together.

    >>> _vote_classes(["4", None, "4", "5", None], [True, False, True, False, False])
    ([2, 1, 1, 1], [True, False, False, False])
    """
    counts: dict[object, int] = {}
    right: dict[object, bool] = {}
    for i, (a, ok) in enumerate(zip(answers, correct, strict=True)):
        key: object = ("none", i) if a is None else a
        counts[key] = counts.get(key, 0) + 1
        right[key] = right.get(key, False) or bool(ok)
    return list(counts.values()), [right[k] for k in counts]
