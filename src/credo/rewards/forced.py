"""Template-forced judging with a probability readout of the scores, for judges too small to follow the format.

A small instruction model (SmolLM2-135M) asked for "# Detailed Judgement … ## Score: …" copies the placeholders or
answers a bare number, so every judgement is unscorable. Here the judge writes only the free text: the template's
fixed parts are forced (appended as tokens), each justification is generated up to the end of its line, and each
score is read from the judge's next-token distribution after `## Score:` instead of being sampled — the
probability-weighted score of G-Eval (Liu et al. 2023, arXiv 2303.16634, §2.3):

    s_d = Σ_v p(v | context_d) · v / Σ_v p(v | context_d)        v = the integer scores of the scale (1, 2, 3, 4)

with `mass_d = Σ_v p(v | context_d)` the probability the judge puts on any score token; a dimension whose mass is
below `min_mass` is written as unreadable, so the judgement fails to parse and the sample is unscorable (counted,
left out of training), as a malformed text judgement is. The context then continues with the most likely score
token, so later dimensions read the judge's own greedy score. The filled text has the format of the text mode
(`rewards/judge.py`): `parse_judgement` reads it, and everything downstream (reward, N/A rules, PARROT's filter,
the refined request) is the same. Departures from RationalRewards (which samples the whole judgement): the scores
are expectations, not samples (continuous rewards within a group); no `# Summary` is written (nothing reads it).

Cost: with greedy lines (`judge.temperature = 0`) on the native backend the whole template runs on one KV cache
of the judge's decoder (`CachedFill`): the prompt is prefilled once, each line decoded and each score read where the
previous slot ended. Otherwise each line is one short generation through the seam and a score costs one prefill of
the row's context (the native decoder read directly, `next_token_logprobs`; any other backend: one prefill per scale
value, `GenerationRequest.prompt_logprobs` of the value token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from credo.rollout.backend import GenerationRequest, SamplingParams

SCORE_HEAD = "## Score:"


@dataclass(frozen=True)
class ScoreReadout:
    """How the scores of [lo, hi] are read: `head` (the token ids of `## Score:` as the judge writes it before a
    score), `values` (the integer scores) and `ids` (each value's single token after `head`). Build with
    `ScoreReadout.build`."""

    head_text: str
    head: tuple[int, ...]
    values: tuple[int, ...]
    ids: tuple[int, ...]

    @classmethod
    def build(cls, tokenizer: Any, lo: float, hi: float) -> ScoreReadout:
        """The readout of the integer scores in [lo, hi] for `tokenizer`: `## Score:` then the value as one token
        (" 3"), or `## Score: ` then the value ("3") when the first does not tokenise so. Raises ValueError when the
        scale has fewer than two integers or no spelling gives one distinct token per value."""
        values = tuple(range(math.ceil(lo), math.floor(hi) + 1))
        if len(values) < 2:
            raise ValueError(f"judge.readout='probs' needs at least two integer scores in [{lo:g}, {hi:g}]")
        for head_text in (SCORE_HEAD, SCORE_HEAD + " "):
            head = tokenizer.encode(head_text)
            ids = []
            for v in values:
                full = tokenizer.encode(f"{SCORE_HEAD} {v}")
                if len(full) != len(head) + 1 or full[: len(head)] != head:
                    break
                ids.append(full[-1])
            if len(ids) == len(values) and len(set(ids)) == len(ids):
                return cls(head_text, tuple(head), values, tuple(ids))
        raise ValueError(f"judge.readout='probs': the tokenizer does not write each score of {values} as one token "
                         f"after {SCORE_HEAD!r}; use judge.readout='text'")

    def expected(self, logprobs: torch.Tensor) -> tuple[float, float, int]:
        """(Σ p·v / Σ p, Σ p, index of the most likely value) from the values' log-probs `logprobs` [V]."""
        p = logprobs.double().exp()
        mass = float(p.sum())
        vals = torch.tensor(self.values, dtype=torch.float64)
        score = float((p * vals).sum() / mass) if mass > 0 else math.nan
        return score, mass, int(p.argmax())


@dataclass(frozen=True)
class Slot:
    """One step of a template: `prefix` is forced (appended as tokens), then `kind`: "line" (the judge writes up
    to the end of the line, at most `line_tokens` tokens), "score" (the readout above; `prefix` ends where
    `## Score:` begins) or "" (prefix only)."""

    prefix: str
    kind: str = ""


def judgement_slots(dimensions: Sequence[str], refine: bool = False) -> list[Slot]:
    """The pointwise judgement's template (`rewards/judgement.py` format): per dimension a justification line and a
    score; with `refine`, the refinement comments and the refined request (one line each). Each line starts with a
    forced opener ("The response", "Please"): asked to write the line from its start, SmolLM2-135M ends it at once."""
    slots = [Slot("# Detailed Judgement\n")]
    for i, d in enumerate(dimensions, 1):
        slots += [Slot(f"{i}. {d}:\n## Justification: The response", "line"), Slot("", "score")]
    if refine:
        slots += [Slot("# User Request Refinement:\n## Refinement Comments: The response", "line"),
                  Slot("## Refined Request: Please", "line")]
    return slots


def fill(gen: Any, tokenizer: Any, prompts: Sequence[list[int]], slots: Sequence[Slot], readout: ScoreReadout,
         line_tokens: int = 48, temperature: float = 0.0, min_mass: float = 0.5,
         rng: torch.Generator | None = None) -> list[str]:
    """The filled template text of each prompt (token ids, the judge's chat-framed prompt): slots in order, all
    rows together. A score is written `## Score: 2.734` (4 significant digits), or `## Score: unreadable (mass
    0.12)` when the judge puts less than `min_mass` on the score tokens (the parser then reports the dimension).
    Greedy lines (`temperature` <= 0) on a backend with a step decoder (the native one) run on one KV cache for
    the whole template (`CachedFill`: each token prefilled once); otherwise one `gen.generate` call per line slot
    and one per score slot (a prefill of the whole context each)."""
    decoder = getattr(gen, "decoder", None)
    if temperature <= 0 and callable(getattr(decoder, "new_cache", None)) and callable(getattr(decoder, "step", None)):
        return CachedFill(decoder, tokenizer, prompts).run(slots, readout, line_tokens, min_mass)
    ctx = [list(p) for p in prompts]
    texts = ["" for _ in prompts]
    nl = tokenizer.encode("\n")
    line = SamplingParams(max_new_tokens=line_tokens, temperature=temperature, stop=("\n",))
    one = SamplingParams(max_new_tokens=1, temperature=0.0)
    for slot in slots:
        pre = tokenizer.encode(slot.prefix) if slot.prefix else []
        for i in range(len(ctx)):
            ctx[i] += pre
            texts[i] += slot.prefix
        if slot.kind == "line":
            outs = gen.generate([GenerationRequest(c) for c in ctx], line, rng)
            for i, o in enumerate(outs):
                ids = o[0].completion_ids.tolist()
                text = tokenizer.decode(ids)
                body = text.split("\n", 1)[0]
                ctx[i] += ids if text.endswith("\n") else ids + nl
                texts[i] += body.rstrip() + "\n"
        elif slot.kind == "score":
            lps = _value_logprobs(gen, [c + list(readout.head) for c in ctx], readout.ids, one, rng)
            for i in range(len(ctx)):
                score, mass, best = readout.expected(lps[i])
                ctx[i] += list(readout.head) + [readout.ids[best]] + nl
                shown = f"{score:.4g}" if mass >= min_mass else f"unreadable (mass {mass:.2f})"
                texts[i] += f"{SCORE_HEAD} {shown}\n"
        elif slot.kind:
            raise ValueError(f"unknown template slot kind {slot.kind!r}")
    return texts


class CachedFill:
    """`fill` with greedy lines on one KV cache of a step decoder (`models.policy.Decoder`: `new_cache` / `step`
    with a mask of real tokens; the native backend's convention): every token of the template is fed once, where
    the generic path re-prefills the whole context for every line and every score. Rows advance in lockstep; a row
    whose line has ended is fed padding (mask False: never attended, no RoPE position), so each row's tokens and
    positions are those of its own sequence and the text equals the generic path's (up to floating-point rounding
    of the batch). A line ends, as there, after the first token whose text holds a newline, at EOS, or after
    `line_tokens` tokens."""

    def __init__(self, decoder: Any, tokenizer: Any, prompts: Sequence[list[int]]) -> None:
        self.decoder, self.tok = decoder, tokenizer
        self.pad = getattr(tokenizer, "pad_id", 0) or 0
        self.eos = set(getattr(tokenizer, "eos_ids", ()) or ())
        self.pending = [list(p) for p in prompts]  # tokens of each row not yet fed to the cache
        self.texts = ["" for _ in prompts]
        self.dev = next(iter(decoder.parameters())).device
        self.last: torch.Tensor | None = None  # [B, V] logits after each row's last fed token

    def run(self, slots: Sequence[Slot], readout: ScoreReadout, line_tokens: int, min_mass: float) -> list[str]:
        """The filled text of every row (`fill`'s contract); the decoder's module in eval mode meanwhile."""
        module = getattr(self.decoder, "engine", self.decoder)
        was = module.training if isinstance(module, torch.nn.Module) else False
        if was:
            module.eval()
        try:
            return self._run(slots, readout, line_tokens, min_mass)
        finally:
            if was:
                module.train()

    def _run(self, slots: Sequence[Slot], readout: ScoreReadout, line_tokens: int, min_mass: float) -> list[str]:
        nl = self.tok.encode("\n")
        heads = [self.tok.encode(s.prefix) if s.prefix else [] for s in slots]
        room = max(len(p) for p in self.pending) + sum(len(h) + 2 for h in heads)
        room += sum(line_tokens + 1 if s.kind == "line" else len(readout.head) + 2 for s in slots) + 8
        self.cache = self.decoder.new_cache(len(self.pending), room)
        for slot, head in zip(slots, heads, strict=True):
            for i in range(len(self.pending)):
                self.pending[i] += head
                self.texts[i] += slot.prefix
            if slot.kind == "line":
                for i, ids in enumerate(self._line(line_tokens)):
                    text = self.tok.decode(ids)
                    self.texts[i] += text.split("\n", 1)[0].rstrip() + "\n"
                    self.pending[i] += [] if text.endswith("\n") else nl
            elif slot.kind == "score":
                for i in range(len(self.pending)):
                    self.pending[i] += list(readout.head)
                lps = torch.log_softmax(self._flush(), dim=-1)[:, list(readout.ids)].cpu()
                for i in range(len(self.pending)):
                    score, mass, best = readout.expected(lps[i])
                    self.pending[i] += [readout.ids[best], *nl]
                    shown = f"{score:.4g}" if mass >= min_mass else f"unreadable (mass {mass:.2f})"
                    self.texts[i] += f"{SCORE_HEAD} {shown}\n"
            elif slot.kind:
                raise ValueError(f"unknown template slot kind {slot.kind!r}")
        return self.texts

    def _flush(self) -> torch.Tensor:
        """Feed every row's pending tokens (right-aligned, padding before the shorter ones) and return the float32
        logits [B, V] after each row's last token (a row with nothing pending keeps its previous logits)."""
        width = max(len(p) for p in self.pending)
        if width == 0 and self.last is not None:
            return self.last
        x = torch.full((len(self.pending), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(self.pending), width, dtype=torch.bool)
        for i, p in enumerate(self.pending):
            x[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = True
        self.pending = [[] for _ in self.pending]
        return self._step(x, mask)

    def _step(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append x [B, t] (mask [B, t], False = padding) to the cache; the logits after each row's last real
        token [B, V] (`self.last` keeps them for rows whose last column is padding)."""
        with torch.inference_mode():
            logits = self.decoder.step(x.to(self.dev), self.cache, mask.to(self.dev))[:, -1].float()
        real = mask[:, -1].to(logits.device)
        self.last = logits if self.last is None else torch.where(real[:, None], logits, self.last)
        return self.last

    def _line(self, budget: int) -> list[list[int]]:
        """Each row's greedy line (token ids, its ending token included); the tokens picked at the last step are
        left pending (fed with the next slot's tokens)."""
        logits = self._flush()
        lines: list[list[int]] = [[] for _ in self.pending]
        live = [True] * len(lines)
        for t in range(budget):
            tok = logits.argmax(-1).tolist()
            picked = list(live)
            for i in (i for i, on in enumerate(picked) if on):
                lines[i].append(tok[i])
                live[i] = tok[i] not in self.eos and "\n" not in self.tok.decode(lines[i])
            if t == budget - 1 or not any(live):
                for i in (i for i, on in enumerate(picked) if on):
                    self.pending[i].append(tok[i])
                break
            x = torch.tensor([tok[i] if on else self.pad for i, on in enumerate(picked)])
            logits = self._step(x[:, None], torch.tensor(picked)[:, None])
        return lines


def next_token_logprobs(decoder: Any, rows: Sequence[list[int]], ids: Sequence[int], pad_id: int = 0) -> torch.Tensor:
    """log p(v | row) [B, len(ids)] of the tokens `ids` after each row (token ids), from one left-padded prefill of
    a `models.policy.Decoder` (`new_cache` / `step`, the native sampler's convention: mask False = padding);
    log-softmax over the whole vocabulary in float32, no temperature."""
    dev = next(decoder.parameters()).device
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = True
    with torch.inference_mode():
        logits = decoder.step(x.to(dev), decoder.new_cache(len(rows), width), mask.to(dev))[:, -1].float()
    return torch.log_softmax(logits, dim=-1)[:, list(ids)].cpu()


def _value_logprobs(gen: Any, rows: list[list[int]], ids: Sequence[int], params: SamplingParams,
                    rng: torch.Generator | None) -> torch.Tensor:
    """[B, V] log-probs of the value tokens after each row: the native backend's decoder read directly, else one
    prompt-scoring request per (row, value) through the seam."""
    decoder = getattr(gen, "decoder", None)
    if decoder is not None and callable(getattr(decoder, "new_cache", None)):
        return next_token_logprobs(decoder, rows, ids, getattr(gen.tokenizer, "pad_id", 0) or 0)
    outs = gen.generate([GenerationRequest(r + [v], prompt_logprobs=1) for r in rows for v in ids], params, rng)
    k = len(ids)
    return torch.stack([torch.stack([outs[i * k + j][0].prompt_logprobs[-1] for j in range(k)])
                        for i in range(len(rows))])


__all__ = ["SCORE_HEAD", "CachedFill", "ScoreReadout", "Slot", "fill", "judgement_slots", "next_token_logprobs"]
