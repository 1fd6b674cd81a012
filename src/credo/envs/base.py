"""The `Environment` protocol and the `Score` its verifier returns (verifier functions: `envs.verifiers`)."""

from __future__ import annotations

from typing import Protocol

from credo.data import SCORED, UNSCORABLE, Example, Score

__all__ = ["SCORED", "UNSCORABLE", "Environment", "Score", "sample_metrics"]


class Environment(Protocol):
    """A dataset of `Example`s plus the verifier that scores completions of them."""

    name: str

    def examples(self, split: str) -> list[Example]:
        """All examples of `split` ("train", "test" or "sft"); deterministic for a fixed seed."""
        ...

    def verify(self, completion: str, example: Example) -> Score:
        """The verdict on `completion` for `example`. Total: never raises for any string; a completion that cannot
        be judged (no answer found, an unparsable reference) gives `Score.unscorable`, which the trainer counts
        and leaves out of training instead of scoring it 0."""
        ...

    def render_prompt(self, example: Example) -> str:
        """The text the policy is conditioned on."""
        ...

    def reference_completion(self, example: Example) -> str:
        """A correct, well-formatted completion for the SFT warm start."""
        ...


def sample_metrics(env: Environment, texts: list[str], examples: list[Example]) -> dict[str, float]:
    """The environment's own diagnostics of a batch of completions (`env.sample_metrics(texts, examples)`, an
    optional method; e.g. the scenes sandbox's bad-seeing / bad-thinking attribution), {} when it has none.
    The loop logs them per RL step for the rollouts and per evaluation (with `eval/` in front) for the greedy
    completions."""
    fn = getattr(env, "sample_metrics", None)
    return dict(fn(texts, examples)) if fn is not None else {}
