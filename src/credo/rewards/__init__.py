"""Reward terms composed by config. Each term maps (sample, verifier score) to a float; the reward is their
weighted sum and every term is logged as a part."""

from __future__ import annotations

from collections.abc import Callable

from credo.data import Example, Sample
from credo.envs.base import Environment, Score
from credo.envs.runner import VerifyRunner, run_inline


def outcome(sample: Sample, score: Score) -> float:
    """The verifier's outcome value (1 for a correct answer)."""
    return score.value


def answer_format(sample: Sample, score: Score) -> float:
    """1 when the answer is well formed (the verifier's `format` part)."""
    return score.parts.get("format", 0.0)


REWARDS: dict[str, Callable[[Sample, Score], float]] = {"outcome": outcome, "format": answer_format}


def score_samples(
    samples: list[Sample], examples: dict[str, Example], env: Environment, weights: dict[str, float],
    runner: VerifyRunner | None = None,
) -> dict[str, float]:
    """Set `reward` and `reward_parts` on every sample; return batch metrics under `reward/` and `verify/`.

    Completions are scored by `runner` (its function: the env's verifier or `reward.function`, with a per-item
    timeout in worker processes), or inline by `env.verify` when no runner is given. A verifier that raises
    anyway, or runs past its timeout, scores 0 and is counted in `verify/errors` or `verify/timeouts`: never
    silently.
    """
    jobs = [(s.text, examples[s.example_id]) for s in samples]
    verdicts = runner.run(jobs) if runner is not None else run_inline(env.verify, jobs)
    sums: dict[str, float] = {}
    for s, score in zip(samples, verdicts.scores, strict=True):
        parts = {name: REWARDS[name](s, score) for name, w in weights.items() if w != 0}
        parts.update({f"verifier/{k}": v for k, v in score.parts.items()})
        s.reward = sum(w * parts[name] for name, w in weights.items() if w != 0)
        s.reward_parts = parts
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    n = max(1, len(samples))
    metrics = {f"reward/{k.removeprefix('verifier/')}": v / n for k, v in sums.items()}
    metrics["reward/mean"] = sum(s.reward for s in samples) / n
    metrics["verify/errors"] = float(verdicts.errors)
    metrics["verify/timeouts"] = float(verdicts.timeouts)
    return metrics
