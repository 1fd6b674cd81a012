"""Critique-then-score reward models (RationalRewards, arXiv 2604.11626; methods.md §7): a local model — any
Hugging Face causal LM or VLM, or a credo TinyLM — reads the task, the response (and the reference answer when
there is one and `judge.with_reference` is on), writes a critique of each rubric dimension and then one score per
dimension on a fixed scale; the scalar reward is, as in the released RL code (`_parse_scoring_response`),

    r = (mean_d s_d − s_min) / (s_max − s_min)        = (mean(scores) − 1) / 3 on the released 1–4 scale

with N/A dimensions left out of the mean (`judge.reward`: "mean" above, "min" the weakest dimension on the same
normalisation, "raw" the plain mean on the scale; `judge.reward_dimensions` a subset, as the released edit code
leaves Image Faithfulness out of its reward).

The judge generates through the generation seam (`rollout.backend.make_generator`) on its own model: a separate
engine, never trained, never synced with the policy. Judgements are batched (`judge.batch_size` prompts per
`generate` call) and cached by (prompt, completion, reference shown), so a repeated completion (a frequent one in a
collapsed group, an evaluation of the same answer) is judged once; with `judge.temperature` > 0 the cache keeps the
first sample.

The output format (the pointwise format of §7.1, its dimensions from config):

    # Detailed Judgement
    1. <Dimension>:
    ## Justification: ...
    ## Score: <number from s_min to s_max, or N/A>
    ...
    # Summary: ...
    [# User Request Refinement:            (Generate–Critique–Refine only)
    ## Refinement Comments: ...
    ## Refined Request: ...]

`parse_judgement` is total: it never raises. Scores are found per dimension section (a line naming the dimension,
numbered or alone, in any order); a dimension without a score, a score that is not a number, one outside the
scale, N/A on a dimension that may not be N/A, or two different scores for one dimension give an `error` and the
sample is unscorable (NaN from the term: counted in `reward/unscorable`, left out of training).
Departure from the released code, which scores a parse failure 0.0: a judge that fails to answer says nothing
about the response, so it is not trained on as a bad one.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from credo.data import Example, Sample, Score
from credo.rewards.terms import TermResult
from credo.rollout.backend import GenerationRequest, SamplingParams, as_generator, make_generator

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
                 refine: bool = False) -> str:
    """The judge's prompt text: instructions, the task, the reference (when given), the response, the format."""
    na = ""
    if rubric.na:
        na = f" Write N/A instead of a score only for {', '.join(rubric.na)}, when it does not apply."
    parts = [INSTRUCTIONS.format(lo=rubric.lo, hi=rubric.hi, na=na), f"# Task\n{question.strip()}"]
    if reference is not None:
        parts.append(f"# Reference Answer\n{reference}")
    parts.append(f"# Response\n{response.strip()}")
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


# ---- the judge model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeItem:
    """What the judge reads: the task as the policy saw it, the response, the reference shown (None: hidden) and
    the task's images (a VLM judge sees them)."""

    question: str
    response: str
    reference: str | None = None
    images: list[Any] | None = field(default=None, compare=False, hash=False)


class Judge:
    """A judge model behind the generation seam: `judge(items, refine=False) -> list[Judgement]`, batched and
    cached (module docstring). `generator` is any `rollout.backend.Generator` (a bare decoder is wrapped in a
    native one); it is never synced with a policy. A prompt longer than the engine's context (`max_len` −
    `max_new_tokens`) is not judged: its judgement has the error "judge prompt too long".
    Counters: `calls` (items asked), `hits` (answered without a generation of their own: cached, or a duplicate
    of an earlier item of the same call)."""

    def __init__(self, generator: Any, tokenizer: Any, rubric: Rubric, max_new_tokens: int = 256,
                 temperature: float = 0.0, batch_size: int = 16, cache_size: int = 65536, seed: int = 0) -> None:
        if min(batch_size, max_new_tokens, cache_size) < 1 or temperature < 0:
            raise ValueError("judge: batch_size, max_new_tokens and cache_size must be >= 1, temperature >= 0")
        self.gen = as_generator(generator, tokenizer)
        self.tok = tokenizer if tokenizer is not None else self.gen.tokenizer
        self.rubric, self.batch_size, self.cache_size = rubric, batch_size, cache_size
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        self.rng = torch.Generator().manual_seed(seed)
        max_len = getattr(self.gen, "max_len", None)
        self.max_prompt = None if max_len is None else max_len - max_new_tokens
        self.cache: OrderedDict[tuple, Judgement] = OrderedDict()
        self.calls = self.hits = 0

    def _encode(self, item: JudgeItem, refine: bool) -> list[int]:
        ids = self.tok.encode_prompt(judge_prompt(self.rubric, item.question, item.response, item.reference, refine))
        if item.images and hasattr(self.tok, "with_images"):
            ids = self.tok.with_images(ids, len(item.images))
        return ids

    def judge(self, items: Sequence[JudgeItem], refine: bool = False) -> list[Judgement]:
        """One judgement per item, in order; the uncached ones generated in batches of `batch_size`."""
        keys = [(it.question, it.response, it.reference, refine) for it in items]
        self.calls += len(items)
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        self.hits += len(keys) - len(todo)  # from the cache, or a duplicate within this call
        first = {k: it for k, it in zip(keys, items, strict=True)}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            encoded = [self._encode(first[k], refine) for k in chunk]
            fits = [self.max_prompt is None or len(ids) <= self.max_prompt for ids in encoded]
            requests = [GenerationRequest(ids, images=first[k].images) for k, ids, ok in
                        zip(chunk, encoded, fits, strict=True) if ok]
            outs = iter(self.gen.generate(requests, self.params, self.rng) if requests else [])
            for k, ok in zip(chunk, fits, strict=True):
                if not ok:
                    self._store(k, Judgement({}, "", "judge prompt too long"))
                    continue
                text = self.tok.decode(next(outs)[0].completion_ids.tolist())
                self._store(k, parse_judgement(text, self.rubric))
        return [self.cache[k] if k in self.cache else self._missing(k) for k in keys]

    def _store(self, key: tuple, j: Judgement) -> None:
        self.cache[key] = j
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def _missing(self, key: tuple) -> Judgement:  # evicted within one call (cache_size < batch): judged again
        return self.judge([JudgeItem(key[0], key[1], key[2])], refine=key[3])[0]


def rubric_from_config(jc: Any) -> Rubric:
    """The `Rubric` of a `[judge]` config section."""
    return Rubric(tuple(jc.dimensions), jc.scale_min, jc.scale_max, tuple(jc.na_dimensions))


def load_judge(jc: Any, model_cfg: Any, tokenizer_chat: bool = True) -> Judge:
    """The judge of a `[judge]` section: its model (`judge.model`, a directory or a known name; "" = the policy's
    `model.path`) loaded frozen with the policy's model options (dtype, device), its own generator
    (`judge.backend`). Raises ValueError when no model is named."""
    import copy

    from credo.models import load_policy

    path = jc.model or getattr(model_cfg, "path", "")
    if not path:
        raise ValueError("the judge needs a model: set judge.model (or model.path)")
    mc = copy.deepcopy(model_cfg)
    if mc is not None:
        mc.lora.rank, mc.gradient_checkpointing, mc.chat_template = 0, False, tokenizer_chat
    model, tok = load_policy(path, mc)
    model.eval().requires_grad_(False)
    gen = make_generator(jc.backend, model, tok)
    return Judge(gen, tok, rubric_from_config(jc), jc.max_new_tokens, jc.temperature, jc.batch_size, jc.cache_size)


# ---- the reward term -------------------------------------------------------------------------------------------


def _question(env: Any, example: Example) -> str:
    prompt = env.render_prompt(example) if env is not None else example.prompt
    if isinstance(prompt, str):
        return prompt
    from credo.rewards.perception import question_text

    return question_text(Example(example.id, prompt, example.reference))


class JudgeTerm:
    """The `judge` reward term: each sample's judge reward (module docstring), NaN when the judgement failed.

    Built from a `TermContext` (its `cfg.judge` section and `cfg.model`); `judge` replaces the loaded model (tests,
    scripts). The judge reads the task as the policy saw it (`env.render_prompt`), what the policy wrote
    (`Sample.scored_text`) and the example's reference when `judge.with_reference` is on.
    Metrics: `judge/unscorable` (share), `judge/score/<dimension>` (mean over scored samples), `judge/cache_hits`
    (share of this call), `judge/verifier_agreement` (share of scorable samples whose judge verdict, reward >=
    `judge.correct_threshold`, equals the verifier's `correct`), and every `judge.every`-th call (the first
    included) `judge/samples`: the prompt, response, critique, scores and verdicts of `judge.shown_samples`
    samples, for the run report."""

    def __init__(self, ctx: Any, judge: Judge | None = None) -> None:
        self.jc = ctx.cfg.judge
        self.env = ctx.env
        self.judge = judge if judge is not None else load_judge(self.jc, ctx.cfg.model)
        self.every = max(1, getattr(getattr(ctx.cfg, "eval", None), "every", 1))
        self.n_calls = 0

    def __call__(self, samples: list[Sample], examples: list[Example]) -> TermResult:
        jc, rubric = self.jc, self.judge.rubric
        by_id = {e.id: e for e in examples}
        items = []
        for s in samples:
            ex = by_id[s.example_id]
            ref = str(ex.reference) if jc.with_reference and ex.reference is not None else None
            items.append(JudgeItem(_question(self.env, ex), s.scored_text, ref, ex.images))
        hits0 = self.judge.hits
        js = self.judge.judge(items)
        values = torch.tensor([j.reward(rubric, jc.reward, jc.reward_dimensions) for j in js], dtype=torch.float)
        metrics = judge_metrics(js, values, samples, rubric, jc.correct_threshold)
        metrics["judge/cache_hits"] = (self.judge.hits - hits0) / max(1, len(samples))
        self.n_calls += 1
        if jc.shown_samples > 0 and (self.n_calls == 1 or self.n_calls % self.every == 0):
            metrics["judge/samples"] = shown(items, js, values, samples, jc.shown_samples)
        return TermResult(values, metrics)


def judge_metrics(js: list[Judgement], values: torch.Tensor, samples: list[Sample], rubric: Rubric,
                  threshold: float = 0.5) -> dict[str, Any]:
    """`judge/unscorable`, `judge/score/<dimension>` and `judge/verifier_agreement` (see `JudgeTerm`)."""
    n = max(1, len(js))
    ok = [i for i, v in enumerate(values.tolist()) if math.isfinite(v)]
    out: dict[str, Any] = {"judge/unscorable": (len(js) - len(ok)) / n}
    for d in rubric.dimensions:
        vals = [js[i].scores[d] for i in ok if js[i].scores.get(d) is not None]
        if vals:
            out[f"judge/score/{d}"] = sum(vals) / len(vals)
    both = [i for i in ok if samples[i].verdict is not None and samples[i].verdict.scorable]
    if both:
        out["judge/verifier_agreement"] = sum((float(values[i]) >= threshold) == samples[i].correct
                                              for i in both) / len(both)
    return out


def shown(items: list[JudgeItem], js: list[Judgement], values: torch.Tensor, samples: list[Sample],
          k: int) -> list[dict[str, Any]]:
    """The first `k` samples as report rows: prompt, completion, critique, scores, reward (None when
    unscorable), the parse error and the verifier's `correct`."""
    rows = []
    for it, j, v, s in list(zip(items, js, values.tolist(), samples, strict=True))[:k]:
        rows.append({"prompt": it.question, "completion": it.response, "critique": j.text, "scores": j.scores,
                     "reward": v if math.isfinite(v) else None, "error": j.error, "correct": s.correct})
    return rows


__all__ = ["REWARD_FORMULAS", "Judge", "JudgeItem", "JudgeTerm", "Judgement", "Rubric", "judge_metrics",
           "judge_prompt", "judge_reward", "load_judge", "parse_judgement", "refined_request", "rubric_from_config"]
