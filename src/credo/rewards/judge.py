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

`parse_judgement` (with the prompt, the rubric and `judge_reward`, in `rewards/judgement.py`) is total: it never
raises. Scores are found per dimension section (a line naming the dimension, numbered or alone, in any order); a
dimension without a score, a score that is not a number, one outside the scale, N/A on a dimension that may not
be N/A, or two different scores for one dimension give an `error` and the sample is unscorable (NaN from the term:
counted in `reward/unscorable`, left out of training). Departure from the released code, which scores a parse
failure 0.0: a judge that fails to answer says nothing about the response, so it is not trained on as a bad one.

`judge.readout = "probs"` (`rewards/forced.py`) is for judges too small to write the format: the template is
forced, the justification lines are the judge's own, and each score is the probability-weighted score of the
judge's next-token distribution after `## Score:` (G-Eval); the filled text is parsed as above.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from credo.data import Example, Sample
from credo.rewards.forced import ScoreReadout, fill, judgement_slots
from credo.rewards.judgement import (
    REWARD_FORMULAS,
    Judgement,
    Rubric,
    judge_prompt,
    judge_reward,
    parse_judgement,
    refined_request,
)
from credo.rewards.terms import TermResult
from credo.rollout.backend import GenerationRequest, SamplingParams, as_generator, make_generator, resolve_backend

# ---- the judge model -----------------------------------------------------------------------------------------

READOUTS = ("text", "probs")  # judge.readout: the judge writes the judgement | template forced, scores read out


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
    `max_new_tokens`) is not judged: its judgement has the error "judge prompt too long". `readout` "probs" fills
    the forced template instead (`rewards/forced.py`: `line_tokens` per line, a score whose tokens get less than
    `min_score_mass` unreadable); it raises ValueError for image items and when the tokenizer cannot spell each
    score as one token.
    Counters: `calls` (items asked), `hits` (answered without a generation of their own: cached, or a duplicate
    of an earlier item of the same call)."""

    def __init__(self, generator: Any, tokenizer: Any, rubric: Rubric, max_new_tokens: int = 256,
                 temperature: float = 0.0, batch_size: int = 16, cache_size: int = 65536, seed: int = 0,
                 readout: str = "text", line_tokens: int = 48, min_score_mass: float = 0.5) -> None:
        if min(batch_size, max_new_tokens, cache_size, line_tokens) < 1 or temperature < 0:
            raise ValueError("judge: batch_size, max_new_tokens, line_tokens and cache_size must be >= 1, "
                             "temperature >= 0")
        if readout not in READOUTS:
            raise ValueError(f"judge.readout: unknown {readout!r}; choose one of {READOUTS}")
        self.gen = as_generator(generator, tokenizer)
        self.tok = tokenizer if tokenizer is not None else self.gen.tokenizer
        self.rubric, self.batch_size, self.cache_size = rubric, batch_size, cache_size
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        # readout "probs": the template is forced and the scores read from the judge's distribution (rewards/forced.py)
        self.readout = ScoreReadout.build(self.tok, rubric.lo, rubric.hi) if readout == "probs" else None
        self.line_tokens, self.min_score_mass = line_tokens, min_score_mass
        self.rng = torch.Generator().manual_seed(seed)
        max_len = getattr(self.gen, "max_len", None)
        self.max_prompt = None if max_len is None else max_len - max_new_tokens
        self.cache: OrderedDict[tuple, Judgement] = OrderedDict()
        self.calls = self.hits = 0

    def _encode(self, item: JudgeItem, refine: bool) -> list[int]:
        ids = self.tok.encode_prompt(judge_prompt(self.rubric, item.question, item.response, item.reference, refine,
                                                  show_format=self.readout is None))
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
            texts = iter(self._texts([ids for ids, ok in zip(encoded, fits, strict=True) if ok],
                                     [first[k].images for k, ok in zip(chunk, fits, strict=True) if ok], refine))
            for k, ok in zip(chunk, fits, strict=True):
                if not ok:
                    self._store(k, Judgement({}, "", "judge prompt too long"))
                    continue
                self._store(k, parse_judgement(next(texts), self.rubric))
        return [self.cache[k] if k in self.cache else self._missing(k) for k in keys]

    def _texts(self, prompts: list[list[int]], images: list[Any], refine: bool) -> list[str]:
        """The judge's output text per prompt: sampled whole (readout "text") or the forced template filled."""
        if not prompts:
            return []
        if self.readout is not None:
            if any(images):
                raise ValueError("judge.readout='probs' reads text judges only; use judge.readout='text' with images")
            return fill(self.gen, self.tok, prompts, judgement_slots(self.rubric.dimensions, refine), self.readout,
                        self.line_tokens, self.params.temperature, self.min_score_mass, self.rng)
        requests = [GenerationRequest(ids, images=im) for ids, im in zip(prompts, images, strict=True)]
        outs = self.gen.generate(requests, self.params, self.rng)
        return [self.tok.decode(o[0].completion_ids.tolist()) for o in outs]

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
    backend = resolve_backend(jc.backend, model)
    # the loop never puts the judge's generator to sleep: packed weight copies only for the length of a call
    gen = make_generator(backend, model, tok, **({"keep_packed": False} if backend == "native" else {}))
    return Judge(gen, tok, rubric_from_config(jc), jc.max_new_tokens, jc.temperature, jc.batch_size, jc.cache_size,
                 readout=jc.readout, line_tokens=jc.line_tokens, min_score_mass=jc.min_score_mass)


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
