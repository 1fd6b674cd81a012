"""The native batched sampler: KV-cached decoding of any `Decoder` (a model with `new_cache` / `step`).

Prompts are left-padded into one [B, P] block and prefilled once (each distinct prompt once, its rows then copying
its keys and values, when the decoder's cache can copy rows); then every step appends one token per row.
Returned log-probs are those of the sampling distribution before top-k / top-p truncation, log softmax(logits / T),
which is exactly what the trainer recomputes (`trainer.logprobs`), so the two agree to float precision. This is the
kernel of the native generation backend (`rollout.native.NativeGenerator`); callers go through the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from credo.models.policy import Decoder
from credo.rollout.backend import SamplingParams


@dataclass
class Decoded:
    """One row of a `generate` call."""

    prompt_ids: list[int]
    completion_ids: torch.Tensor  # [C] long (includes EOS / the stop string's tokens when it ended the row)
    logprobs: torch.Tensor  # [C] float
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prompt_logprobs: torch.Tensor | None = None  # [K] float: the prompt's last K tokens (`score_last`)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the nucleus of mass `top_p` (the top token is always kept)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set to -inf every token below the k-th largest logit of its row (ties with it are kept)."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


Generators = torch.Generator | list[torch.Generator] | None  # one stream for the batch, or one per row
DROP_FINISHED = 1 / 8  # finished rows leave the decoding batch once they are this share of it (`generate`)


@dataclass
class _LiveRows:
    """The rows still decoding, `index` [b] into a call's `total` rows, whose streams are `generator`: each step
    draws as if all rows were there, so a row's draws do not depend on which rows have left (`generate`)."""

    generator: Generators
    index: torch.Tensor
    total: int


def _uniforms(n: int, generator: Generators | _LiveRows, dev: torch.device) -> torch.Tensor:
    """[n, 1] uniforms: n draws from one stream, or one draw per row from its own stream (rows sharing a stream
    draw in row order, which is the sequence `torch.rand(k, 1)` draws on that stream); for `_LiveRows`, the live
    rows' draws of a step of all rows."""
    if isinstance(generator, _LiveRows):
        live, gen = generator.index, generator.generator
        if isinstance(gen, list):
            return _uniforms(n, [gen[i] for i in live.tolist()], dev)
        return _uniforms(generator.total, gen, dev)[live.to(dev)]
    if isinstance(generator, list):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} rows")
        return torch.cat([torch.rand(1, 1, generator=g, device=g.device) for g in generator]).to(dev)
    gen_dev = generator.device if generator is not None else dev
    return torch.rand(n, 1, generator=generator, device=gen_dev).to(dev)


SAMPLE_BLOCK = 256  # vocabulary entries per block of `_sample`'s two-level search


def _sample(weights: torch.Tensor, generator: Generators | _LiveRows) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `weights` [B, V] (non-negative, unnormalised: probabilities or exp(logits − max)) by
    inverse-CDF sampling on one uniform per row (`_uniforms`); returns the tokens [B] and the rows' total weights
    [B]. Same distribution as `torch.multinomial`, whose per-element exponential draws cost ~10% of a tiny model's
    decode step on a CPU. The search runs in two levels, blocks of SAMPLE_BLOCK entries, then one block: a
    cumulative sum over the whole vocabulary is a serial scan per row (~7 ms per step for 64 rows × 49152 on 2
    cores), block sums are not. A token of weight 0 is never drawn (each level takes the first entry whose
    cumulative weight reaches the target, the target kept in (0, total])."""
    B, V = weights.shape
    u = _uniforms(B, generator, weights.device)  # [B, 1]
    nb = -(-V // SAMPLE_BLOCK)
    w = weights if nb * SAMPLE_BLOCK == V else F.pad(weights, (0, nb * SAMPLE_BLOCK - V))
    w = w.view(B, nb, SAMPLE_BLOCK)
    csum = w.sum(-1).cumsum(-1)  # [B, nb]
    total = csum[:, -1:]
    tiny = torch.finfo(csum.dtype).tiny
    x = (u * total).clamp_(min=tiny).minimum(total)  # the target cumulative weight, in (0, total]
    b = torch.searchsorted(csum, x).clamp_(max=nb - 1)  # [B, 1]: the first block reaching it
    before = torch.where(b > 0, csum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(x))
    inner = w.gather(1, b[:, :, None].expand(B, 1, SAMPLE_BLOCK))[:, 0].cumsum(-1)  # [B, SAMPLE_BLOCK]
    r = (x - before).clamp_(min=tiny).minimum(inner[:, -1:])
    j = torch.searchsorted(inner, r).clamp_(max=SAMPLE_BLOCK - 1)
    return (b * SAMPLE_BLOCK + j)[:, 0], total[:, 0]


def _sample_logits(logits: torch.Tensor, temperature: float,
                   generator: Generators | _LiveRows) -> tuple[torch.Tensor, torch.Tensor]:
    """A token per row from softmax(logits / temperature) [B, V] and its log-prob: (tokens [B], log-probs [B]).
    The weights are exp(z − max z), z = logits / T; log p = z_tok − max z − log Σ exp(z − max z), the
    log-softmax at the drawn token without a full [B, V] log-softmax."""
    z = logits if temperature == 1.0 else logits / temperature
    m = z.amax(-1, keepdim=True)  # [B, 1]
    tok, total = _sample((z - m).exp_(), generator)
    return tok, z.gather(-1, tok[:, None])[:, 0] - m[:, 0] - total.log()


def _log_softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) [B, V]."""
    return (logits if temperature == 1.0 else logits / temperature).log_softmax(-1)


def _left_pad(prompts: list[list[int]], pad_id: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded into ids [B, P] and their real-token mask [B, P] bool."""
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = True
    return ids.to(dev), mask.to(dev)


def _prefill(
    decoder: Decoder, prompts: list[list[int]], score_last: list[int], pad_id: int, dev: torch.device, N: int,
    images: list | None, lp_temperature: float,
) -> tuple[object, torch.Tensor, torch.Tensor | None]:
    """A new cache holding the prompts, the next-token logits [B, V], and the log-probs [B, K] of each row's last
    k_i = `score_last[i]` prompt tokens (K = max k_i; row i's are its last k_i columns).

    Without scoring (all k_i = 0) the prompts are left-padded into one block and fed at once. With scoring, each
    row's head (all but its last k_i tokens, images included) is fed as one left-padded block, then the tails,
    left-padded to K, one column at a time: a pad in a tail column is masked (decoders take interior padding) and
    leaves the row's logits as they were, so each scored token is read from the logits after the row's previous
    real token."""
    K = max(score_last, default=0)
    heads = [p[: len(p) - k] for p, k in zip(prompts, score_last, strict=True)]
    ids, mask = _left_pad(heads, pad_id, dev)
    cache = decoder.new_cache(len(prompts), ids.shape[1] + K + N)
    kw = {} if images is None else {"images": images}
    logits = decoder.step(ids, cache, mask, **kw)[:, -1].float()  # [B, V]
    if K == 0:
        return cache, logits, None
    tails, tmask = _left_pad([p[len(p) - k :] for p, k in zip(prompts, score_last, strict=True)], pad_id, dev)
    scored = []
    for c in range(K):
        scored.append(_log_softmax_at(logits, lp_temperature).gather(-1, tails[:, c : c + 1])[:, 0])  # [B]
        nxt = decoder.step(tails[:, c : c + 1], cache, tmask[:, c : c + 1])[:, -1].float()
        logits = torch.where(tmask[:, c : c + 1], nxt, logits)
    return cache, logits, torch.stack(scored, 1)  # [B, K]


def _shared_prefill(
    decoder: Decoder, prompts: list[list[int]], score_last: list[int], pad_id: int, dev: torch.device, N: int,
    images: list | None, lp_temperature: float,
) -> tuple[object, torch.Tensor, torch.Tensor | None]:
    """`_prefill`, with each distinct prompt prefilled once when rows repeat it (a request's n samples, side by
    side) and the cache can copy rows (`select_rows`, the native engine's `KVCache`): the prefill's cost drops
    n-fold. Rows with images or scored prompt tokens take the plain path."""
    distinct: dict[tuple[int, ...], int] = {}
    inverse = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    if (images is not None or any(score_last) or len(distinct) == len(prompts)
            or not callable(getattr(decoder.new_cache(1, 1), "select_rows", None))):
        return _prefill(decoder, prompts, score_last, pad_id, dev, N, images, lp_temperature)
    cache, logits, _ = _prefill(decoder, [list(p) for p in distinct], [0] * len(distinct), pad_id, dev, N, None,
                                lp_temperature)
    index = torch.tensor(inverse, dtype=torch.long, device=dev)
    return cache.select_rows(index), logits[index], None


@torch.inference_mode()
def generate(
    decoder: Decoder,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_id: int | list[int],
    pad_id: int,
    stop_ids: list[list[int]] | None = None,
    generator: Generators = None,
    images: list | None = None,
    score_last: list[int] | None = None,
) -> list[Decoded]:
    """Sample one completion per prompt. `eos_id` is one id or a list (any of them ends a row); `stop_ids` are
    the token sequences of the stop strings; `generator` is one random stream for the batch or a list of one per
    row (a row draws one uniform per step from its stream, so a row's tokens do not depend on its batch mates
    beyond floating-point rounding); `images`, per row, the row's images (read once, at the prefill, their
    placeholders outside the scored tail); `score_last[i]` = k: also return the log-probs of prompt i's last k
    tokens (0 <= k < len(prompt i); `Decoded.prompt_logprobs` then holds K = max k values, row i's the last k).

    Finished rows leave the decoding batch when the decoder's cache can drop rows (`keep_rows`: the native
    engine's `KVCache`) once they make up DROP_FINISHED of it, so later steps compute only the live rows (what
    continuous batching gives vLLM); the random draws stay those of the full batch (`_LiveRows`), so the tokens
    are the same as without dropping up to floating-point rounding."""
    dev = next(iter(decoder.parameters())).device
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=dev)
    B, N = len(prompts), params.max_new_tokens
    greedy = params.temperature <= 0
    sample_t = 1.0 if greedy else params.temperature  # greedy: log-probs of the raw logits
    lp_t = sample_t if params.logprob_temperature is None else params.logprob_temperature
    cache, logits, prompt_lp = _shared_prefill(decoder, prompts, score_last or [0] * B, pad_id, dev, N, images, lp_t)

    out = torch.full((B, N), pad_id, dtype=torch.long, device=dev)
    out_lp = torch.zeros(B, N, device=dev)
    hits = torch.zeros(B, N, dtype=torch.bool, device=dev)  # token t is an EOS or ends a stop string
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    live = torch.arange(B, device=dev)  # the rows in the decoding batch (logits' rows)
    can_drop = callable(getattr(cache, "keep_rows", None))
    stops = [torch.tensor(s, dtype=torch.long, device=dev) for s in (stop_ids or []) if s]
    truncated = params.top_k > 0 or params.top_p < 1.0
    for t in range(N):
        gen = generator if len(live) == B else _LiveRows(generator, live, B)
        tok_lp = None  # log-prob of the drawn token under softmax(logits / sample_t), when the draw gives it
        if greedy:
            tok = logits.argmax(-1)
        elif truncated:
            scaled = logits if sample_t == 1.0 else logits / sample_t
            if params.top_k > 0:
                scaled = _top_k_filter(scaled, params.top_k)
            if params.top_p < 1.0:
                scaled = _top_p_filter(scaled, params.top_p)
            tok = _sample(scaled.softmax(-1), gen)[0]
        else:
            tok, tok_lp = _sample_logits(logits, sample_t, gen)
        was_done = done[live]
        tok = tok.masked_fill_(was_done, pad_id)  # a finished row's entries are cut off by `_rows`
        out[live, t] = tok
        if tok_lp is not None and lp_t == sample_t:
            out_lp[live, t] = tok_lp  # the sampling distribution before truncation, at the drawn token
        else:
            out_lp[live, t] = _log_softmax_at(logits, lp_t).gather(-1, tok[:, None])[:, 0]
        hit = (tok == eos) if len(eos) == 1 else torch.isin(tok, eos)
        for s in stops:
            L = len(s)
            if t + 1 >= L:
                hit |= (out[live, t + 1 - L : t + 1] == s).all(1)
        hits[live, t] = hit
        done[live] = was_done | hit
        if t == N - 1 or bool(done.all()):
            break
        finished = done[live]
        if can_drop and int(finished.sum()) >= max(1, DROP_FINISHED * len(live)):
            keep = (~finished).nonzero()[:, 0]
            cache.keep_rows(keep)
            live, tok = live[keep], tok[keep]
        logits = decoder.step(tok[:, None], cache)[:, -1].float()
    return _rows(prompts, out, out_lp, hits, prompt_lp, N)


def _rows(
    prompts: list[list[int]], out: torch.Tensor, out_lp: torch.Tensor, hits: torch.Tensor,
    prompt_lp: torch.Tensor | None, N: int,
) -> list[Decoded]:
    """Each row cut at its first hit ("stop") or at the cap N ("length")."""
    stopped = hits.any(1)
    length = torch.where(stopped, hits.int().argmax(1) + 1, N)
    out, out_lp, length, stopped = out.cpu(), out_lp.cpu(), length.cpu(), stopped.cpu()
    prompt_lp = prompt_lp.float().cpu() if prompt_lp is not None else None
    results = []
    for i in range(len(prompts)):
        n = int(length[i])
        results.append(
            Decoded(
                prompt_ids=list(prompts[i]),
                completion_ids=out[i, :n].clone(),
                logprobs=out_lp[i, :n].clone(),
                finish_reason="stop" if bool(stopped[i]) else "length",
                prompt_logprobs=prompt_lp[i].clone() if prompt_lp is not None else None,
            )
        )
    return results
