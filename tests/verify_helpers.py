"""Scoring functions for tests/test_verify_runner.py, in a module that spawned worker processes can import."""

from __future__ import annotations

import os
import time

from credo.envs.base import Score


def echo(completion: str, reference: object) -> Score:
    """1 when the completion equals str(reference) (an Example's `reference`); `format`: the completion is non-empty."""
    reference = getattr(reference, "reference", reference)
    return Score(float(completion == str(reference)), {"format": float(bool(completion))})


def flaky(completion: str, reference: object) -> Score:
    """Raises on "raise", sleeps forever on "hang", kills its process on "crash", else `echo`."""
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "hang":
        time.sleep(1000)
    if completion == "crash":
        os._exit(3)
    return echo(completion, reference)


def length_reward(completion: str, example: object) -> float:
    """A user reward function (`reward.function = "verify_helpers:length_reward"`): a float, not a Score."""
    return len(completion) / 10


def sparse_reward(completion: str, example: object) -> float:
    """1 for a completion whose length is a multiple of 7, else 0: sparse, many groups all-equal (DAPO refill)."""
    return float(len(completion) % 7 == 0)


def nan_reward(completion: str, example: object) -> float:
    return float("nan")


def raise_after_wait(completion: str, example: object) -> Score:
    """Raises on a rethought completion (it contains a "Wait" trigger), else 1.0: rethink's checks are counted."""
    if "Wait" in completion:
        raise RuntimeError("verifier bug on rethinks")
    return Score(1.0, {"correct": 1.0, "format": 1.0})
