"""Verdicts, then reward terms.

`verify_samples` runs the verifier once per sample (in worker processes with a per-item timeout) and sets
`Sample.verdict`; `terms.RewardModel` sums the enabled reward terms into `Sample.reward`. An unscorable verdict
(the verifier raised, timed out, returned None/NaN) is counted and its sample left out of training.
"""

from __future__ import annotations

import logging

from credo.data import Example, Sample
from credo.envs.base import Environment
from credo.envs.runner import OK, VerifyRunner, run_inline
from credo.rewards.terms import TERMS, RewardModel, TermContext, term_weights

log = logging.getLogger(__name__)


def verify_samples(
    samples: list[Sample], examples: dict[str, Example], env: Environment, runner: VerifyRunner | None = None,
) -> dict[str, float]:
    """Set `Sample.verdict` on every sample; return `verify/errors`, `verify/timeouts` (counts) and
    `verify/unscorable` (every unscorable verdict, including a verifier's own "cannot parse the reference").

    The text scored is what the policy wrote (`Sample.policy_text` where the rollout set it: multi-turn
    observations are context, never an answer), scored by `runner` (the env's verifier or a per-item
    `reward.function`) or inline by `env.verify` when no runner is given."""
    jobs = [(s.scored_text, examples[s.example_id]) for s in samples]
    verdicts = runner.run(jobs) if runner is not None else run_inline(env.verify, jobs)
    for s, score in zip(samples, verdicts.scores, strict=True):
        s.verdict = score
    _log_failures(verdicts.status, verdicts.messages)
    return {
        "verify/errors": float(verdicts.errors),
        "verify/timeouts": float(verdicts.timeouts),
        "verify/unscorable": float(sum(not sc.scorable for sc in verdicts.scores)),
    }


MAX_LOGGED_FAILURES = 3  # verifier errors / timeouts logged with their message per process; the rest only counted
_logged_failures = 0


def _log_failures(status: list[str], messages: list[str]) -> None:
    """Log the first MAX_LOGGED_FAILURES verifier errors and timeouts of the process with their messages, so that
    a broken verifier or reward function is seen at once, not only as a count in `verify/errors`."""
    global _logged_failures
    for st, msg in zip(status, messages, strict=True):
        if st == OK or _logged_failures >= MAX_LOGGED_FAILURES:
            continue
        _logged_failures += 1
        last = "; later ones are only counted" if _logged_failures == MAX_LOGGED_FAILURES else ""
        log.warning("verifier %s: %s (the sample is unscorable: counted in verify/%ss, left out of training%s)",
                    st, msg or "no message", st, last)


def score_samples(
    samples: list[Sample], examples: dict[str, Example], env: Environment, weights: dict[str, float],
    runner: VerifyRunner | None = None,
) -> dict[str, float]:
    """Verdicts, then the reward of the verdict-only terms (`outcome`, `format`) weighted by `weights`; a
    convenience for callers without a run config (tests, scripts). Returns the metrics of both stages."""
    metrics = verify_samples(samples, examples, env, runner)
    model = RewardModel({k: w for k, w in weights.items() if w != 0}, TermContext(cfg=None, env=env))
    metrics.update(model(samples, list(examples.values())))
    return metrics


__all__ = ["TERMS", "RewardModel", "TermContext", "score_samples", "term_weights", "verify_samples"]
