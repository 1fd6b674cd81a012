"""REER's parts (arXiv 2509.06160, "Reverse-Engineered Reasoning for Open-Ended Generation"; released data
synthesis `multimodal-art-projection/REER_DeepWriter`, reference/methods.md §6): the prompts, the search's settings
(`ReerConfig`), the scorer (`Scorer`, `PolicyScorer`), the text (segments, the answer's scored part, rewrites, the
SFT solution), the score (clipped log-PPL of the answer) and the generator's requests (`Ask`, `sample`). The search
that uses them is `trainer.reer` (`search_batch`, `search`, module docstring); this module does not import it.

Departures from the released code (each also in docs/algorithms.md; the search's own are in `trainer.reer`):
- one-segment answers: the released score has nothing to score when y has no blank line (its first segment is
  context); here the whole of y is scored after "<answer>\\n" instead.
- a rewrite without a closing tag: the text after the last "<refine>" is used (a small model often stops early);
  no "<refine>" at all makes the candidate invalid (counted as `invalid`);
- rewrites stop at "</refine>" (the released run samples on and takes the last block): same text, fewer tokens;
- `direct_refine` (opt-in, off by default): the rewrite's prefill closes an empty analysis and opens `<refine>`;
- `edit = "resample"` (opt-in, off by default; for generators that cannot follow the segment-edit prompt): a
  candidate for segment i is a fresh sample of that segment from the initial-thinking context (question, answer,
  "<think>\\n" + the accepted segments before i), stopped at the next blank line — a proposal from the generator's
  own distribution, as in a Gibbs-style local search, instead of an instructed rewrite; acceptance is unchanged;
- English prompts only (the Chinese templates and triggers are not used); the prompts are credo's own wording of
  the released instructions (methods.md §6.2), not the released text;
- the token split between context and scored answer: the scored tokens are those after the longest common prefix
  of the tokenisations of the context and of context + scored text (one tokenisation of the whole row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from credo.rollout.backend import GenerationRequest, Generator, SamplingParams
from credo.trainer.logprobs import sequence_logprobs

INITIAL_THINKING = (
    "Below are a request and the response that an expert wrote for it. Write the private thinking the expert "
    "went through just before writing that response.\n\n"
    "## Request\n{question}\n\n## Response (written after the thinking)\n{answer}\n\n"
    "## How to write the thinking\n"
    "- First person, present and future tense, as if the response does not exist yet: understand what is asked, "
    "decide what the response needs, plan its parts and their order, work out the details.\n"
    "- Think like a person: doubt and correct yourself with phrases such as \"Hmm, maybe\", \"Let me think\", "
    "\"Wait no\", \"But wait\", \"Alternatively\".\n"
    "- Separate the steps of your thinking by blank lines.\n"
    "- End with a section headed \"--- Outline (or Draft) ---\" that sketches the response; do not copy the "
    "response.\n"
    "Write the whole thinking between <think> and </think>."
)
INFERENCE = "{question}"  # the question as a user turn: what the trained model will see at inference time
SEGMENT_EDIT = (
    "Below are a request, the response written for it, and the thinking that led to the response, split into the "
    "part before one segment, the segment, and the part after it. Rewrite the segment so that the thinking leads "
    "more naturally and more precisely to the response.\n\n"
    "## Request\n{question}\n\n## Response\n{answer}\n\n"
    "## Thinking before the segment\n{before}\n\n## Segment to rewrite\n{segment}\n\n"
    "## Thinking after the segment\n{after}\n\n"
    "## How to rewrite\n"
    "- Keep the first-person voice and the present/future tense; keep what the segment does, enrich it with the "
    "reasoning, checks or planning the response needs; never copy the response.\n"
    "- First analyse what is missing between <analyze> and </analyze>, then write only the new segment between "
    "<refine> and </refine>."
)
EDIT_PREFILL = "Let's find out what can be improved and enriched to better align with the target text.\n<analyze>\n"
DIRECT_PREFILL = EDIT_PREFILL + "</analyze>\n<refine>\n"  # `ReerConfig.direct_refine` (not released)
EDITS = ("rewrite", "resample")  # how a segment's candidates are proposed (ReerConfig.edit)
PRE_TRIGGERS = (("Okay, I am given", 0.2), ("Alright, the user", 0.32), ("Alright", 0.48))  # released (English)


@dataclass
class ReerConfig:
    """The search's settings; the defaults are the released code's (`config.yaml`, methods.md §6.2)."""

    candidates: int = 2  # K rewrites sampled per segment step (num_expansion)
    max_steps: int = 10  # segment steps at most (max_step); also at most the number of segments
    stop_threshold: float = 0.25  # stop as soon as the score (clipped log-PPL of the answer) is below this
    clip_min: float = -2.0  # per-token log-probs are clipped to [clip_min, clip_max] before the mean
    clip_max: float = 0.0
    max_new_tokens: int = 8000  # generator tokens per rollout (initial trajectory and each rewrite)
    temperature: float = 0.8  # generator sampling (released vLLM settings)
    top_p: float = 0.85
    top_k: int = 40
    min_init_tokens: int = 100  # skip an item whose initial trajectory is shorter (tokens)
    seed: int = 0  # seeds each item's own random stream (with the item's line number): resumable and repeatable
    pre_triggers: tuple[tuple[str, float], ...] = PRE_TRIGGERS  # (text, probability) the trajectory starts with
    direct_refine: bool = False  # opt-in, not released: prefill an empty analysis and "<refine>\n" (small generators)
    edit: str = "rewrite"  # rewrite (released segment-edit prompt) | resample (not released: resample the segment)
    segment_tokens: int = 256  # edit = "resample": tokens per resampled segment at most

    def __post_init__(self) -> None:
        if self.edit not in EDITS:
            raise ValueError(f"reer edit: unknown {self.edit!r}; choose one of {EDITS}")


class Scorer(Protocol):
    """Teacher-forced log-probs of scored text: `logprobs(rows)` with rows `(context_ids, target_ids)` gives, per
    row, log p(target_t | context, target_<t) [len(target_ids)] (nats). `tokenizer` frames the context."""

    tokenizer: Any

    def logprobs(self, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]: ...


class PolicyScorer:
    """A `Scorer` over a credo `Policy` (e.g. a Hugging Face model from `models.load_policy`): the rows are
    right-padded into one batch [B, T] and scored by `trainer.logprobs.sequence_logprobs` (temperature 1) on the
    target positions only, `batch` rows at a time, without gradient."""

    def __init__(self, policy: Any, tokenizer: Any, batch: int = 4) -> None:
        self.policy, self.tokenizer, self.batch = policy, tokenizer, batch

    def logprobs(self, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """Rows are batched in order of length (less padding), results returned in the order of `rows`."""
        out: list[torch.Tensor | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda k: len(rows[k][0]) + len(rows[k][1]))
        dev = next(iter(self.policy.parameters())).device
        was = self.policy.training
        self.policy.eval()
        try:
            for start in range(0, len(rows), self.batch):
                idx = order[start : start + self.batch]
                for k, lp in zip(idx, self._score([rows[k] for k in idx], dev), strict=True):
                    out[k] = lp
        finally:
            self.policy.train(was)
        return [lp for lp in out if lp is not None]

    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], list[int]]], dev: torch.device) -> list[torch.Tensor]:
        T = max(len(c) + len(t) for c, t in rows)
        ids = torch.full((len(rows), T), self.tokenizer.pad_id, dtype=torch.long)
        positions = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, (c, t) in enumerate(rows):
            ids[i, : len(c) + len(t)] = torch.tensor(c + t)
            positions[i, len(c) : len(c) + len(t)] = True
        lp, _ = sequence_logprobs(self.policy, ids.to(dev), positions=positions.to(dev))  # [B, T]
        return [lp[i, len(c) : len(c) + len(t)].float().cpu() for i, (c, t) in enumerate(rows)]


# ---- text: segments, the answer's scored part, rewrites -------------------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Pieces of `text` at `sep`, a piece inside an open LaTeX display block `\\[` … `\\]` joined to the next."""
    out, buf = [], []
    for piece in text.split(sep):
        buf.append(piece)
        joined = sep.join(buf)
        if joined.count("\\[") <= joined.count("\\]"):
            out.append(joined)
            buf = []
    if buf:
        out.append(sep.join(buf))
    return [s.strip() for s in out if s.strip()]


def segment(text: str) -> list[str]:
    """The segments of a trajectory: blank-line ("\\n\\n") paragraphs, each stripped, empty ones dropped, a LaTeX
    display block `\\[…\\]` never cut; single lines ("\\n") when the paragraphs are fewer than two.

    >>> segment("a\\n\\n\\\\[x\\n\\ny\\\\]\\n\\nb")
    ['a', '\\\\[x\\n\\ny\\\\]', 'b']
    >>> segment("one\\ntwo")
    ['one', 'two']
    """
    segs = _split(text, "\n\n")
    return segs if len(segs) > 1 else _split(text, "\n")


def answer_parts(answer: str) -> tuple[str, str]:
    """(context part, scored part) of the answer y: y's first blank-line segment is context, the rest (from the
    blank line on) is scored, as released. A one-segment y is scored whole (departure: module docstring).

    >>> answer_parts("Plan.\\n\\nStep 1.\\n\\nDone.")
    ('Plan.', '\\n\\nStep 1.\\n\\nDone.')
    >>> answer_parts("42")
    ('', '42')
    """
    cut = answer.find("\n\n")
    if cut <= 0 or not answer[cut:].strip():
        return "", answer
    return answer[:cut], answer[cut:]


def good_answer(solution: str) -> str:
    """y from an input solution: the part after `</think>` when it has one (released rule), stripped."""
    return solution.rsplit("</think>", 1)[-1].strip()


def refinement(text: str) -> str | None:
    """The rewrite in a segment-edit completion: the text of its last `<refine>…</refine>` block; after the last
    `<refine>` when the block is not closed (departure); None without `<refine>` or when the text is empty.

    >>> refinement("<analyze>..</analyze>\\n<refine>\\nNew step.\\n</refine>"), refinement("no tags")
    ('New step.', None)
    """
    start = text.rfind("<refine>")
    if start < 0:
        return None
    body = text[start + len("<refine>") :].split("</refine>", 1)[0].strip()
    return body or None


def sft_solution(trajectory: str, answer: str) -> str:
    """The SFT completion `<think>\\n{z}\\n</think>\\n<answer>\\n{y}\\n</answer>` (the scoring context's shape)."""
    return f"<think>\n{trajectory}\n</think>\n<answer>\n{answer}\n</answer>"


# ---- the score -----------------------------------------------------------------------------------------------


def clipped_score(logprobs: torch.Tensor, clip_min: float = -2.0, clip_max: float = 0.0) -> float:
    """− mean_t clip(logprobs_t, clip_min, clip_max): REER's clipped log-perplexity of the scored answer tokens
    (`logprobs` [N], nats; lower is better). Raises ValueError for N = 0 (nothing to score).

    >>> clipped_score(torch.tensor([-0.5, -3.0, -1.0, -0.5]))
    1.0
    """
    if logprobs.numel() == 0:
        raise ValueError("no answer tokens to score")
    return float(-logprobs.float().clamp(clip_min, clip_max).mean())


def scoring_row(tokenizer: Any, question: str, trajectory: str, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, scored ids) of one trajectory: context = the tokenizer's prompt framing of the inference
    prompt + "<think>\\n" + z + "\\n</think>\\n<answer>\\n" + y's first segment; scored = the rest of y
    (`answer_parts`). The row is tokenised once; the scored ids follow the longest common prefix of the context's
    own tokenisation and the row's."""
    head, scored = answer_parts(answer)
    prompt = tokenizer.encode_prompt(INFERENCE.format(question=question))
    text = f"<think>\n{trajectory}\n</think>\n<answer>\n{head}"
    ctx = tokenizer.encode(text)
    full = tokenizer.encode(text + scored)
    k = 0
    while k < min(len(ctx), len(full)) and ctx[k] == full[k]:
        k += 1
    return prompt + full[:k], full[k:]


def batch_scores(scorer: Scorer, pairs: list[tuple[str, str]], trajectories: list[list[str]],
                 cfg: ReerConfig) -> list[list[float]]:
    """Per (question, answer) pair, the clipped score (`clipped_score`) of the answer after each of its
    trajectories; one scorer call for all (none when there is nothing to score)."""
    rows = [scoring_row(scorer.tokenizer, q, z, y) for (q, y), zs in zip(pairs, trajectories, strict=True) for z in zs]
    flat = iter(scorer.logprobs(rows) if rows else [])
    return [[clipped_score(next(flat), cfg.clip_min, cfg.clip_max) for _ in zs] for zs in trajectories]


def trajectory_scores(scorer: Scorer, question: str, answer: str, trajectories: list[str],
                      cfg: ReerConfig) -> list[float]:
    """The clipped score (`clipped_score`) of the answer after each trajectory, one scorer call for all."""
    return batch_scores(scorer, [(question, answer)], [trajectories], cfg)[0]


# ---- generation ----------------------------------------------------------------------------------------------


@dataclass
class Ask:
    """One request of the search to the generator: `n` completions of the chat-framed `prompt` followed by the
    assistant's `prefill`, stopped at `stop`, at most `max_new_tokens` new tokens."""

    prompt: str
    prefill: str
    n: int
    stop: tuple[str, ...]
    max_new_tokens: int


def _room(gen: Generator, prompt_len: int, want: int) -> int:
    """New tokens that fit after a prompt of `prompt_len` tokens: `want`, capped by the generator's `max_len` (or
    the Hugging Face model's `max_position_embeddings`). Raises ValueError when the prompt leaves no room."""
    limit = getattr(gen, "max_len", None)
    model = getattr(getattr(gen, "policy", None), "model", None)
    limit = limit or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    n = want if limit is None else min(want, limit - prompt_len)
    if n < 1:
        raise ValueError(f"prompt of {prompt_len} tokens leaves no room under the model's {limit} positions")
    return n


def sample(gen: Generator, asks: list[Ask], rngs: list[torch.Generator],
           cfg: ReerConfig) -> list[list[tuple[str, int]] | ValueError]:
    """Per ask, its completions (text, token count), or the ValueError of a prompt that leaves no room. Asks with the
    same stop strings and room share one `generate` call; each request is seeded from its own `rngs[k]` (the item's
    stream), so an ask's completions do not depend on the other items of the batch (the native backend's seeded
    requests: `rollout.native`)."""
    tok = gen.tokenizer
    out: list[list[tuple[str, int]] | ValueError] = [ValueError("not sampled")] * len(asks)
    groups: dict[tuple[tuple[str, ...], int], list[tuple[int, GenerationRequest]]] = {}
    for k, (a, rng) in enumerate(zip(asks, rngs, strict=True)):
        ids = tok.encode_prompt(a.prompt) + tok.encode(a.prefill)
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        try:
            room = _room(gen, len(ids), a.max_new_tokens)
        except ValueError as e:
            out[k] = e
            continue
        groups.setdefault((a.stop, room), []).append((k, GenerationRequest(ids, n=a.n, seed=seed)))
    for (stop, room), reqs in groups.items():
        params = SamplingParams(room, cfg.temperature, cfg.top_p, stop, cfg.top_k)
        outs = gen.generate([r for _, r in reqs], params)
        for (k, _), cs in zip(reqs, outs, strict=True):
            out[k] = [(tok.decode(c.completion_ids.tolist()), len(c.completion_ids)) for c in cs]
    return out


def initial_ask(question: str, answer: str, trigger: str, cfg: ReerConfig) -> Ask:
    """The initial trajectory's request: the initial-thinking prompt, prefilled "<think>\\n" + the pre-trigger,
    stopped at "</think>"; its trajectory is the pre-trigger + the completion cut before "</think>"."""
    return Ask(INITIAL_THINKING.format(question=question, answer=answer), "<think>\n" + trigger, 1, ("</think>",),
               cfg.max_new_tokens)


def rewrite_ask(question: str, answer: str, segs: list[str], i: int, cfg: ReerConfig) -> Ask:
    """`cfg.candidates` rewrites of segment `i` of `segs` by the segment-edit prompt (stopped at "</refine>";
    `refinement` reads each). With `cfg.direct_refine` the prefill also closes the analysis and opens `<refine>`
    (`DIRECT_PREFILL`): SmolLM2-135M never leaves its analysis for a `<refine>` block within 256 tokens, so every
    released-style candidate is invalid."""
    prompt = SEGMENT_EDIT.format(question=question, answer=answer, before="\n\n".join(segs[:i]) or "(nothing)",
                                 segment=segs[i], after="\n\n".join(segs[i + 1 :]) or "(nothing)")
    prefill = DIRECT_PREFILL if cfg.direct_refine else EDIT_PREFILL
    return Ask(prompt, prefill, cfg.candidates, ("</refine>",), cfg.max_new_tokens)


def resample_ask(question: str, answer: str, segs: list[str], i: int, cfg: ReerConfig) -> Ask:
    """`cfg.candidates` resamples of segment `i` (`ReerConfig.edit = "resample"`, module docstring): continuations
    of the initial-thinking prompt prefilled with "<think>\\n" and the segments before `i`, stopped at a blank line
    or "</think>", at most `cfg.segment_tokens` tokens."""
    before = "\n\n".join(segs[:i])
    prefill = "<think>\n" + (before + "\n\n" if before else "")
    return Ask(INITIAL_THINKING.format(question=question, answer=answer), prefill, cfg.candidates,
               ("\n\n", "</think>"), min(cfg.max_new_tokens, cfg.segment_tokens))


def candidates(ask: Ask, texts: list[str], cfg: ReerConfig) -> list[str | None]:
    """The segment candidates in the completions of an edit ask (None: invalid): the `<refine>` block of a rewrite
    (`refinement`), or a resample cut at its first blank line or "</think>" (None when that leaves nothing)."""
    if cfg.edit == "rewrite":
        return [refinement(ask.prefill + t) for t in texts]
    cands = [t.split("</think>", 1)[0].strip().split("\n\n", 1)[0].strip() for t in texts]
    return [c or None for c in cands]


__all__ = ["DIRECT_PREFILL", "EDITS", "EDIT_PREFILL", "INFERENCE", "INITIAL_THINKING", "PRE_TRIGGERS", "SEGMENT_EDIT",
           "Ask", "PolicyScorer", "ReerConfig", "Scorer", "answer_parts", "batch_scores", "candidates",
           "clipped_score", "good_answer", "initial_ask", "refinement", "resample_ask", "rewrite_ask", "sample",
           "scoring_row", "segment", "sft_solution", "trajectory_scores"]
