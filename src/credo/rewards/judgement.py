"""What a critique-then-score judge reads and writes (RationalRewards, arXiv 2604.11626; methods.md §7): the rubric,
the pointwise judge prompt, the total parser of its output (`parse_judgement`, the format and rules in
`rewards/judge.py`'s docstring), the scalar reward of a judgement (`judge_reward`) and the refined request of
Generate–Critique–Refine. Pure text and tensors: no model here (the judge model and the reward term are in
`rewards/judge.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from credo.data import Score

# ---- the prompt ------------------------------------------------------------------------------------------------

INSTRUCTIONS = (
    "You are a strict grader. Judge the response to the task below. For each dimension, first write a short "
    "justification, then a score from {lo:g} (worst) to {hi:g} (best): start from a whole number and adjust in "
    "steps of 0.5.{na}"
)
FORMAT_HEAD = "Answer in exactly this format:\n# Detailed Judgement\n"
REFINE_FORMAT = (
    "# User Request Refinement:\n## Refinement Comments: <what the response got wrong and what the request should "
    "stress>\n## Refined Request: <the task rewritten so that a solver answers it correctly; keep the required "
    "answer format>\n"
)


@dataclass(frozen=True)
class Rubric:
    """The named dimensions a judge scores, the scale [lo, hi] and the dimensions that may be N/A.

    Raises ValueError for no dimensions, duplicate names, lo >= hi, or an N/A dimension not in the rubric."""

    dimensions: tuple[str, ...] = ("Correctness", "Reasoning", "Clarity")
    lo: float = 1.0
    hi: float = 4.0
    na: tuple[str, ...] = ()  # dimensions that may be scored N/A (released: Text Rendering, when no text is needed)

    def __post_init__(self) -> None:
        keys = [_key(d) for d in self.dimensions]
        if not keys or len(set(keys)) != len(keys) or not all(keys):
            raise ValueError(f"judge.dimensions must be distinct non-empty names, got {list(self.dimensions)}")
        if not self.lo < self.hi:
            raise ValueError(f"judge scale: scale_min {self.lo} must be < scale_max {self.hi}")
        if unknown := [d for d in self.na if _key(d) not in keys]:
            raise ValueError(f"judge.na_dimensions {unknown} are not in judge.dimensions {list(self.dimensions)}")


def _key(name: str) -> str:
    """A dimension name compared loosely: lower case, single spaces."""
    return " ".join(name.lower().split())


def judge_prompt(rubric: Rubric, question: str, response: str, reference: str | None = None,
                 refine: bool = False, show_format: bool = True) -> str:
    """The judge's prompt text: instructions, the task, the reference (when given), the response, the format (left
    out with `show_format=False`, when the template is forced: a small judge copies its placeholders)."""
    na = ""
    if rubric.na:
        na = f" Write N/A instead of a score only for {', '.join(rubric.na)}, when it does not apply."
    parts = [INSTRUCTIONS.format(lo=rubric.lo, hi=rubric.hi, na=na), f"# Task\n{question.strip()}"]
    if reference is not None:
        parts.append(f"# Reference Answer\n{reference}")
    parts.append(f"# Response\n{response.strip()}")
    if not show_format:
        return "\n\n".join(parts) + "\n"
    fmt = FORMAT_HEAD + "".join(f"{i}. {d}:\n## Justification: ...\n## Score: ...\n"
                                for i, d in enumerate(rubric.dimensions, 1))
    fmt += "# Summary: ...\n" + (REFINE_FORMAT if refine else "")
    parts.append(fmt)
    return "\n\n".join(parts) + "\n"


# ---- the parser --------------------------------------------------------------------------------------------------

MAX_PARSE_CHARS = 20_000  # longer outputs are clipped before the regexes (STYLE rule 7)
_HEADER = re.compile(r"^[#*_\s]*(?:(\d{1,2})\s*[.)]\s*)?[*_]*([A-Za-z][A-Za-z0-9 &/'-]{0,60}?)[*_\s]*:[*_]*\s*(.*)$")
_SCORE = re.compile(r"(?:^|[#*_\s])score[*_\s]*:[*_\s]*(.*)$", re.IGNORECASE)
_NUMBER = re.compile(r"^([+-]?\d+(?:\.\d+)?)(?![,\d])[*_]*\s*(?:(?:/|out of)\s*(\d+(?:\.\d+)?))?")
_NA = re.compile(r"^(?:n\s*/\s*a|na|not applicable)\b", re.IGNORECASE)
_SECTION_END = re.compile(r"^\s*#\s*(?:summary|user request refinement)\b", re.IGNORECASE)
_REFINED = re.compile(r"^[#*_\s]*refined request[*_\s]*:[*_\s]*(.*)$", re.IGNORECASE)
_NON_DIMENSION = {"justification", "score", "summary", "refinement comments", "refined request"}


@dataclass(frozen=True)
class Judgement:
    """A parsed judge output: `scores` per dimension (None = N/A), the full `text` (the critique), `error` ("" when
    every dimension has a valid score) and the `refined_request` (None when absent)."""

    scores: dict[str, float | None]
    text: str
    error: str = ""
    refined_request: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def reward(self, rubric: Rubric, formula: str = "mean", dimensions: Sequence[str] = ()) -> float:
        """The scalar reward (module docstring); NaN when the judgement has an error or no scored dimension among
        `dimensions` (all of them when empty). Raises ValueError for an unknown formula."""
        if formula not in REWARD_FORMULAS:
            raise ValueError(f"judge.reward: unknown {formula!r}; choose one of {REWARD_FORMULAS}")
        if not self.ok:
            return math.nan
        wanted = {_key(d) for d in dimensions} or {_key(d) for d in rubric.dimensions}
        vals = [v for d, v in self.scores.items() if _key(d) in wanted and v is not None]
        if not vals:
            return math.nan
        return judge_reward(torch.tensor(vals), rubric.lo, rubric.hi, formula)

    def to_score(self, rubric: Rubric, formula: str = "mean", dimensions: Sequence[str] = (),
                 threshold: float = 0.5) -> Score:
        """As a verifier's record: value = the reward, parts = the dimension scores, `correct` = reward >=
        `threshold`; `Score.unscorable(error)` when the judgement failed."""
        r = self.reward(rubric, formula, dimensions)
        if not math.isfinite(r):
            return Score.unscorable(self.error or "no dimension scored")
        parts = {d: float(v) for d, v in self.scores.items() if v is not None}
        return Score(r, parts, correct=r >= threshold)


REWARD_FORMULAS = ("mean", "min", "raw")


def judge_reward(scores: torch.Tensor, lo: float = 1.0, hi: float = 4.0, formula: str = "mean") -> float:
    """r from the scored dimensions `scores` [D] (N/A already removed): "mean" (mean − lo)/(hi − lo), the released
    RationalRewards reward, (mean − 1)/3 on 1–4, in [0, 1]; "min" (min − lo)/(hi − lo); "raw" the mean itself.

    >>> judge_reward(torch.tensor([4.0, 2.0, 3.0]))
    0.6666666666666666
    """
    if formula == "raw":
        return float(scores.double().mean())
    agg = scores.double().min() if formula == "min" else scores.double().mean()
    return float((agg - lo) / (hi - lo))


def _score_value(rest: str, rubric: Rubric, dim: str, na_ok: bool) -> tuple[float | None, str]:
    """(value, error) of the text after `Score:`; value None for N/A."""
    rest = rest.strip().strip("*_` ").strip()
    if _NA.match(rest):
        return None, ("" if na_ok else f"N/A for {dim}, which must be scored")
    m = _NUMBER.match(rest)
    if m is None:
        return None, f"{dim}: score {rest[:20]!r} is not a number"
    v = float(m.group(1))
    if m.group(2) is not None and float(m.group(2)) != rubric.hi:
        return None, f"{dim}: score on another scale ({m.group(0).strip()})"
    if not rubric.lo <= v <= rubric.hi:
        return None, f"{dim}: score {v:g} out of range [{rubric.lo:g}, {rubric.hi:g}]"
    return v, ""


def _sections(lines: list[str], rubric: Rubric) -> list[tuple[str | None, list[str]]]:
    """(dimension key or None for text outside every rubric dimension, its lines) in order. A section starts at a
    line naming a rubric dimension (numbered, or the name alone before the colon) or at any other numbered header
    (an extra dimension: ignored); it ends at the next one or at `# Summary` / `# User Request Refinement`."""
    keys = {_key(d) for d in rubric.dimensions}
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lines:
        if _SECTION_END.match(line):
            out.append((None, [line]))
            continue
        m = _HEADER.match(line)
        name = _key(m.group(2)) if m else ""
        if m and name in keys and (m.group(1) or not m.group(3) or _SCORE.search(m.group(3))):
            out.append((name, [m.group(3)]))
        elif m and m.group(1) and name not in _NON_DIMENSION:
            out.append((None, [line]))  # an extra numbered dimension: its score belongs to no rubric dimension
        else:
            out[-1][1].append(line)
    return out


def parse_judgement(text: str, rubric: Rubric) -> Judgement:
    """The scores of a judge's output, never raising (module docstring). Dimensions may come in any order; extra
    text and extra dimensions are ignored; the first error found (in rubric order) is kept.

    >>> r = Rubric(("Correctness", "Clarity"))
    >>> parse_judgement("1. Correctness:\\n## Score: 4\\n2. Clarity:\\n## Score: 2.5", r).scores
    {'Correctness': 4.0, 'Clarity': 2.5}
    >>> parse_judgement("1. Correctness:\\n## Score: 4\\n2. Clarity:\\n## Justification: cut", r).error
    'missing score for Clarity'
    """
    text = text if isinstance(text, str) else ""
    clipped = text[:MAX_PARSE_CHARS]
    if not clipped.strip():
        return Judgement({}, text, "empty judgement")
    lines = clipped.splitlines()
    found: dict[str, list[tuple[float | None, str]]] = {}
    for key, sec in _sections(lines, rubric):
        if key is None:
            continue
        for line in sec:
            if (m := _SCORE.search(line)) is not None:
                dim = next(d for d in rubric.dimensions if _key(d) == key)
                found.setdefault(key, []).append(_score_value(m.group(1), rubric, dim, _key(dim) in
                                                              {_key(n) for n in rubric.na}))
                break  # the first score line of a section is its score
    scores: dict[str, float | None] = {}
    error = ""
    for d in rubric.dimensions:
        got = found.get(_key(d), [])
        if not got:
            error = error or f"missing score for {d}"
            continue
        err = next((e for _, e in got if e), "")
        values = {v for v, _ in got}
        if err or len(values) > 1:
            error = error or err or f"{d} scored twice with different values"
            continue
        scores[d] = got[0][0]
    if not error and all(v is None for v in scores.values()):
        error = "every dimension N/A"
    return Judgement(scores, text, error, refined_request(clipped))


def refined_request(text: str) -> str | None:
    """The text after `## Refined Request:` up to the next `#` header line (or the end), stripped; None when
    there is none or it is empty."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if (m := _REFINED.match(line)) is not None:
            body = [m.group(1)]
            for nxt in lines[i + 1 :]:
                if nxt.lstrip().startswith("#"):
                    break
                body.append(nxt)
            out = "\n".join(body).strip()
            return out or None
    return None


__all__ = ["MAX_PARSE_CHARS", "REWARD_FORMULAS", "Judgement", "Rubric", "judge_prompt", "judge_reward",
           "parse_judgement", "refined_request"]
