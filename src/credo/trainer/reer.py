"""REER: reverse-engineered reasoning (arXiv 2509.06160, "Reverse-Engineered Reasoning for Open-Ended
Generation"; released data synthesis `multimodal-art-projection/REER_DeepWriter`, reference/methods.md §6).

Given a question x and a known-good answer y, find the thinking trajectory z that makes y most likely,
`z* = argmin_z PPL(y | x, z)`, by gradient-free local search over the segments of z:

    z0      = Generator(initial-thinking prompt(x, y)), prefilled "<think>\\n" + a pre-trigger
    segs    = z0 split at blank lines ("\\n\\n", LaTeX \\[…\\] blocks kept whole; "\\n" when that gives one segment)
    score(z)= − mean_{t ∈ y after its first segment} clip(log p(t | ctx), −2, 0)         (lower is better)
              ctx = chat(inference prompt(x)) + "<think>\\n" + z + "\\n</think>\\n<answer>\\n" + y's first segment
    stop when score < 0.25; else for i < min(10, #segs): K = 2 rewrites of segment i (segment-edit prompt,
    prefilled "Let's find out …\\n<analyze>\\n"; the text of the last <refine>…</refine>), keep the best one
    when it lowers the score (greedy), stop when the score < 0.25.

The output row is what `credo sft` reads (`envs.dataset`: prompt, answer, solution) with the solution
`<think>\\n{z*}\\n</think>\\n<answer>\\n{y}\\n</answer>` and the search's record under "reer"; the files, the
resumable driver and model loading are in `trainer.reer_io` (`credo reer`).

The prompts, settings, scorer, segments, score and generator requests the search uses are in `trainer.reer_parts`
(their public names are re-exported here).

Departures from the released code (each also in docs/algorithms.md; those of the prompts, the rewrites, the
resamples and the score are in `trainer.reer_parts`):
- an accepted rewrite replaces segment i as one unit (not re-split), so later steps edit the original segments i+1…;
- skipped items (a rollout under `min_init_tokens` tokens or of one segment, as released, or an initial-thinking
  prompt too long for the generator) go to `<out>.skipped.jsonl`, not into the SFT file; the released code drops
  them silently; an edit prompt too long for the generator makes that step's K candidates invalid;
- items are searched in lockstep (`search_batch`, `credo reer --batch`): one generation batch and one scoring call
  per stage, each item's requests seeded from its own stream, so its result does not depend on its batch mates
  (the released code batches all items through vLLM with one sampling seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from credo.rollout.backend import Generator
from credo.trainer.reer_parts import (  # the public names of reer_parts are re-exported (__all__)
    DIRECT_PREFILL,
    EDIT_PREFILL,
    EDITS,
    INFERENCE,
    INITIAL_THINKING,
    PRE_TRIGGERS,
    SEGMENT_EDIT,
    Ask,
    PolicyScorer,
    ReerConfig,
    Scorer,
    answer_parts,
    batch_scores,
    candidates,
    clipped_score,
    good_answer,
    initial_ask,
    refinement,
    resample_ask,
    rewrite_ask,
    sample,
    scoring_row,
    segment,
    sft_solution,
    trajectory_scores,
)

# ---- the search ----------------------------------------------------------------------------------------------


@dataclass
class ReerResult:
    """One item's search: the final trajectory and its record (scores are `clipped_score`s, lower is better)."""

    status: str  # "done" | "skipped"
    trajectory: str = ""  # z*: the accepted segments joined by blank lines
    reason: str = ""  # why an item was skipped
    score_before: float = float("nan")  # score of z0
    score_after: float = float("nan")  # score of z*
    reached_threshold: bool = False  # score_after < stop_threshold
    steps: int = 0  # segment steps taken (each samples K rewrites)
    accepted: int = 0  # rewrites kept
    invalid: int = 0  # rewrites without a <refine> block (resamples: empty ones)
    n_segments: int = 0  # segments of z0
    init_tokens: int = 0  # generated tokens of z0
    pre_trigger: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # per step: segment, candidate scores, accepted


@dataclass
class ReerJob:
    """One item to search and its own random streams (`run_reer` seeds them from the item's line): `rng` draws the
    generator's request seeds, `pick` the pre-trigger. `segs` / `best` / `result` hold the search in progress."""

    question: str
    answer: str
    rng: torch.Generator
    pick: random.Random
    segs: list[str] = field(default_factory=list)
    best: float = float("inf")
    result: ReerResult = field(default_factory=lambda: ReerResult("done"))

    def skip(self, reason: str) -> None:
        self.result.status, self.result.reason = "skipped", reason


def _scores(scorer: Scorer, jobs: list[ReerJob], trajs: list[list[str]], cfg: ReerConfig) -> list[list[float]]:
    """`clipped_score` of each job's answer after each of its trajectories, in one scorer call for all jobs."""
    return batch_scores(scorer, [(j.question, j.answer) for j in jobs], trajs, cfg)


def _start(gen: Generator, scorer: Scorer, jobs: list[ReerJob], cfg: ReerConfig) -> list[ReerJob]:
    """z0 of every job (one batch), its segments, the skip rule and z0's score; returns the jobs still searching."""
    texts, probs = zip(*cfg.pre_triggers, strict=True)
    triggers = [j.pick.choices(texts, weights=probs)[0] for j in jobs]
    asks = [initial_ask(j.question, j.answer, t, cfg) for j, t in zip(jobs, triggers, strict=True)]
    live = []
    for j, t, got in zip(jobs, triggers, sample(gen, asks, [j.rng for j in jobs], cfg), strict=True):
        j.result.pre_trigger = t
        if isinstance(got, ValueError):
            j.skip(str(got))
            continue
        text, n_tokens = got[0]
        j.segs = segment((t + text.split("</think>", 1)[0]).strip())
        j.result.n_segments, j.result.init_tokens = len(j.segs), n_tokens
        if n_tokens < cfg.min_init_tokens or len(j.segs) < 2:
            j.skip(f"initial trajectory of {n_tokens} tokens, {len(j.segs)} segment(s)")
        else:
            live.append(j)
    for j, (score,) in zip(live, _scores(scorer, live, [["\n\n".join(j.segs)] for j in live], cfg), strict=True):
        j.best = j.result.score_before = score
    return live


def _step(gen: Generator, scorer: Scorer, jobs: list[ReerJob], i: int, cfg: ReerConfig) -> None:
    """Segment step `i` of every job in `jobs`: K candidates each (one batch), all scored in one call, the best
    kept per job when it lowers that job's score (greedy)."""
    make = resample_ask if cfg.edit == "resample" else rewrite_ask
    asks = [make(j.question, j.answer, j.segs, i, cfg) for j in jobs]
    valid: list[list[str]] = []
    for j, a, got in zip(jobs, asks, sample(gen, asks, [j.rng for j in jobs], cfg), strict=True):
        # an edit prompt too long for the generator: its K candidates are invalid, the search goes on
        cands = [None] * a.n if isinstance(got, ValueError) else candidates(a, [t for t, _ in got], cfg)
        valid.append([c for c in cands if c is not None])
        j.result.steps += 1
        j.result.invalid += len(cands) - len(valid[-1])
    trajs = [["\n\n".join([*j.segs[:i], c, *j.segs[i + 1 :]]) for c in cs] for j, cs in zip(jobs, valid, strict=True)]
    for j, cs, scores in zip(jobs, valid, _scores(scorer, jobs, trajs, cfg), strict=True):
        k = min(range(len(scores)), key=scores.__getitem__) if scores else -1
        keep = k >= 0 and scores[k] < j.best
        if keep:
            j.segs[i], j.best = cs[k], scores[k]
            j.result.accepted += 1
        j.result.history.append({"segment": i, "scores": [round(x, 4) for x in scores], "accepted": keep})


def search_batch(gen: Generator, scorer: Scorer, jobs: list[ReerJob], cfg: ReerConfig) -> list[ReerResult]:
    """REER's search (module docstring; methods.md §6.2) for several items at once, in lockstep: z0 of all, then
    segment step i of every item still above `cfg.stop_threshold` with more than i segments, for i <
    `cfg.max_steps`; each stage is one generation batch and one scoring call. An item's result does not depend on
    its batch mates (its own seeds; floating-point rounding of the batch aside). A prompt too long for the
    generator skips its item (reason recorded); results in the order of `jobs`."""
    live = _start(gen, scorer, jobs, cfg)
    for i in range(cfg.max_steps):
        live = [j for j in live if j.best >= cfg.stop_threshold and i < len(j.segs)]
        if not live:
            break
        _step(gen, scorer, live, i, cfg)
    for j in jobs:
        if j.result.status == "done":
            j.result.trajectory, j.result.score_after = "\n\n".join(j.segs), j.best
            j.result.reached_threshold = j.best < cfg.stop_threshold
    return [j.result for j in jobs]


def search(gen: Generator, scorer: Scorer, question: str, answer: str, cfg: ReerConfig, rng: torch.Generator,
           pick: random.Random) -> ReerResult:
    """REER's search for one (question, answer) pair: `search_batch` of one item; z0, its segments, then greedy
    segment rewrites until the score is below `cfg.stop_threshold` or `min(max_steps, #segments)` steps."""
    return search_batch(gen, scorer, [ReerJob(question, answer, rng, pick)], cfg)[0]


__all__ = ["DIRECT_PREFILL", "EDITS", "EDIT_PREFILL", "INFERENCE", "INITIAL_THINKING", "PRE_TRIGGERS", "SEGMENT_EDIT",
           "Ask", "PolicyScorer", "ReerConfig", "ReerJob", "ReerResult", "Scorer", "answer_parts", "batch_scores",
           "candidates", "clipped_score", "good_answer", "initial_ask", "refinement", "resample_ask", "rewrite_ask",
           "sample", "scoring_row", "search", "search_batch", "segment", "sft_solution", "trajectory_scores"]
