"""User reward functions given by import path (`reward.function = "package.module:fn"`) and the runner a run
verifies with: a per-item `fn(completion, example) -> float | Score` replaces the environment's verifier in the
verification workers; TRL's batched `fn(prompts, completions, **columns)` is a reward term instead
(`credo.rewards.terms.Function`)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from credo.data import InputError, Score
from credo.envs.runner import VerifyRunner, as_score


def _import_attr(path: str) -> Callable[..., Any]:
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise InputError(f"reward function {path!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"reward function {path!r}: cannot import it: {e}") from None
    if not callable(fn):
        raise InputError(f"reward function {path!r} is not callable")
    return fn


class RewardFunction:
    """`reward.function = "package.module:fn"`, with `fn(completion, example) -> float | Score`.

    Imported (and checked) at construction; pickles as its path, so a worker imports it by name.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fn: Callable[..., Any] | None = _import_attr(path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self._fn = state["path"], None

    def __call__(self, completion: str, example: Any) -> Score:
        if self._fn is None:
            self._fn = _import_attr(self.path)
        return as_score(self._fn(completion, example))

    def __repr__(self) -> str:
        return f"RewardFunction({self.path!r})"


def load_function(path: str) -> Callable[..., Any]:
    """The callable at import path `"package.module:fn"`; ValueError naming the path when it cannot be imported."""
    return _import_attr(path)


def is_batched_function(path: str) -> bool:
    """Whether the function at `path` takes TRL's batched keywords (`GRPOTrainer` calls `fn(prompts=…,
    completions=…, completion_ids=…, **columns)`): it has a parameter named `completions` (`fn(prompts,
    completions, **kw)`, TRL's `reward_len(completions, **kwargs)`). It is then a reward term
    (`credo.rewards.terms.Function`) and the environment's verifier still gives the verdict; otherwise it is the
    per-item `fn(completion, example)`."""
    try:
        params = inspect.signature(_import_attr(path)).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def make_runner(env: Any, reward: Any) -> VerifyRunner:
    """The runner for a `RewardConfig`: a per-item `reward.function(completion, example)` if set, else `env.verify`
    (env picklable if workers > 0). A TRL-signature function is a reward term instead, and `env.verify` runs here."""
    per_item = reward.function and not is_batched_function(reward.function)
    fn = RewardFunction(reward.function) if per_item else env.verify
    return VerifyRunner(fn, workers=reward.workers, timeout_s=reward.timeout_s)


__all__ = ["RewardFunction", "is_batched_function", "load_function", "make_runner"]
