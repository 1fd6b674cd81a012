"""Ground-truth blame: did a failed completion see wrongly or think wrongly?

The scenes sandbox knows both the true objects and an exact reasoner (`solver.solve`), so every failure gets a
label by construction; a Perception Verification signal (e.g. the policy as a blindfolded reasoner) can then be
scored for agreement with it. The rule, for a completion whose final answer is wrong (typed check):

- `bad_seeing`: the completion has no `<perception>` block, or the program solver, given only the objects parsed
  from its claims, does not reach the reference answer (the claims are wrong in a way that matters);
- `bad_thinking`: the solver on the parsed claims reaches the reference (the seeing was sufficient), yet the
  final answer is wrong.

A correct answer is labelled `correct`. This "sufficient" rule is MoCA's notion (R_P = a blindfolded reasoner
answers correctly from the perception alone) with the exact reasoner. `rule="exact"` is stricter: bad seeing
whenever the claims differ from the ground truth at all (a missed, wrong, extra or malformed claim, relevant or
not), bad thinking only when they are exactly right. `perception_correct` is the exact check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from credo.data import Example
from credo.envs.scenes.claims import parse_claims, perception_text
from credo.envs.scenes.solver import solve
from credo.envs.verifiers.typed import verify_typed

LABELS = ("correct", "bad_seeing", "bad_thinking")


@dataclass(frozen=True)
class Attribution:
    label: str  # one of LABELS
    answer_correct: bool  # the final answer passes the typed check
    has_perception: bool  # at least one <perception> block
    perception_exact: bool  # claims = ground-truth objects, none malformed
    perception_sufficient: bool  # the solver on the parsed claims reaches the reference


def judge_perception(perception: str | None, example: Example) -> tuple[bool, bool]:
    """(exact, sufficient) for a perception text (the claims, without tags); (False, False) for None."""
    if perception is None:
        return False, False
    claimed, bad = parse_claims(perception, example.meta.get("grid", 3))
    exact = bad == 0 and sorted(claimed) == sorted(example.meta["objects"])
    sufficient = solve(example.meta["question"], claimed) == example.reference
    return exact, sufficient


def attribute(completion: str, example: Example, rule: str = "sufficient") -> Attribution:
    """Label one completion of a scenes example (see the module docstring); never raises on the completion."""
    if rule not in ("sufficient", "exact"):
        raise ValueError(f"unknown attribution rule {rule!r} (expected 'sufficient' or 'exact')")
    answer_correct = verify_typed(completion, example.reference).value == 1.0
    text = perception_text(completion)
    exact, sufficient = judge_perception(text, example)
    seeing_ok = exact if rule == "exact" else sufficient
    label = "correct" if answer_correct else ("bad_thinking" if seeing_ok else "bad_seeing")
    return Attribution(label, answer_correct, text is not None, exact, sufficient)


def perception_correct(completion: str, example: Example) -> bool:
    """True when the completion's claims are exactly the ground-truth objects (none malformed, none missing).

    Takes a whole completion; `ScenesEnv.perception_correct` takes the perception text (MoCA's PV protocol)."""
    return attribute(completion, example).perception_exact


def perception_sufficient(completion: str, example: Example) -> bool:
    """True when the exact solver, reading only the claims, answers correctly (the ground truth for PV)."""
    return attribute(completion, example).perception_sufficient


def attribution_metrics(attributions: Sequence[Attribution]) -> dict[str, float]:
    """Shares under `attribution/` (issue 5's diagnostics, from the ground truth):

    - `correct`, `bad_seeing`, `bad_thinking`: label shares of all completions (they sum to 1);
    - `bad_seeing_share`, `bad_thinking_share`: shares of the FAILED completions (sum to 1; NaN with no failure);
    - `perception_acc`: claims exactly right; `perception_sufficient`: claims let the solver answer correctly;
    - `reasoning_given_perception`: answer correct among completions whose perception is sufficient (NaN if none).

    >>> A = Attribution
    >>> m = attribution_metrics([
    ...     A("correct", True, True, True, True), A("bad_seeing", False, True, False, False),
    ...     A("bad_thinking", False, True, True, True), A("bad_thinking", False, True, False, True)])
    >>> [m[f"attribution/{k}"] for k in ("bad_thinking_share", "reasoning_given_perception", "perception_acc")]
    [0.6666666666666666, 0.3333333333333333, 0.5]
    """
    n = max(1, len(attributions))
    out = {f"attribution/{k}": sum(a.label == k for a in attributions) / n for k in LABELS}
    failed = [a for a in attributions if not a.answer_correct]
    for k in ("bad_seeing", "bad_thinking"):
        out[f"attribution/{k}_share"] = sum(a.label == k for a in failed) / len(failed) if failed else math.nan
    out["attribution/perception_acc"] = sum(a.perception_exact for a in attributions) / n
    out["attribution/perception_sufficient"] = sum(a.perception_sufficient for a in attributions) / n
    seen = [a for a in attributions if a.perception_sufficient]
    out["attribution/reasoning_given_perception"] = (sum(a.answer_correct for a in seen) / len(seen) if seen
                                                     else math.nan)
    return out


__all__ = ["LABELS", "Attribution", "attribute", "attribution_metrics", "judge_perception", "perception_correct",
           "perception_sufficient"]
