"""The native batched sampler: KV-cached decoding for any `Policy`.

Prompts are left-padded into one [B, P] block and prefilled once; then every step appends one token per row.
Returned log-probs are those of the sampling distribution before top-p truncation, log softmax(logits / T),
which is exactly what the trainer recomputes (`trainer.logprobs`), so the two agree to float precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from credo.models.policy import Policy


@dataclass
class SamplingParams:
    max_new_tokens: int = 128  # hard cap on generated tokens per row
    temperature: float = 1.0  # 0 means greedy (argmax); log-probs are then those of the raw logits
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with mass >= top_p
    stop: tuple[str, ...] = ()  # stop strings; generation ends after the string's last token


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: torch.Tensor  # [C] long (includes EOS / the stop string when it ended the row)
    logprobs: torch.Tensor  # [C] float
    finish_reason: str  # "stop" (EOS or stop string) | "length"


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the nucleus of mass `top_p` (the top token is always kept)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `probs` [B, V] by inverse-CDF sampling: one uniform per row and a binary search
    in the cumulative sums. Same distribution as `torch.multinomial`, whose per-element exponential draws
    cost ~10% of a tiny model's decode step on a CPU."""
    gen_dev = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[0], 1, generator=generator, device=gen_dev).to(probs.device)
    cdf = probs.cumsum(-1)
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)
    return tok.clamp_(max=probs.shape[-1] - 1)  # u·total can round up to the last cdf value


@torch.inference_mode()
def generate(
    policy: Policy,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_id: int | list[int],
    pad_id: int,
    stop_ids: list[list[int]] | None = None,
    generator: torch.Generator | None = None,
    images: list | None = None,
) -> list[Completion]:
    """Sample one completion per prompt. `eos_id` is one id or a list (any of them ends a row); `stop_ids` are
    the token sequences of the stop strings; `images`, per row, the row's images (read once, at the prefill)."""
    dev = next(iter(policy.parameters())).device
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=dev)
    B = len(prompts)
    P = max(len(p) for p in prompts)
    N = params.max_new_tokens
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = True
    ids, mask = ids.to(dev), mask.to(dev)
    cache = policy.new_cache(B, P + N)
    prefill = policy.step(ids, cache, mask) if images is None else policy.step(ids, cache, mask, images=images)
    logits = prefill[:, -1].float()  # [B, V]

    out = torch.full((B, N), pad_id, dtype=torch.long, device=dev)
    out_lp = torch.zeros(B, N, device=dev)
    hits = torch.zeros(B, N, dtype=torch.bool, device=dev)  # token t is an EOS or ends a stop string
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    stops = [torch.tensor(s, dtype=torch.long, device=dev) for s in (stop_ids or []) if s]
    greedy = params.temperature <= 0
    for t in range(N):
        scaled = logits if greedy or params.temperature == 1.0 else logits / params.temperature
        logp = scaled.log_softmax(-1)  # [B, V]: the returned log-probs, and the probs when nothing is cut
        if greedy:
            tok = scaled.argmax(-1)
        else:
            probs = _top_p_filter(scaled, params.top_p).softmax(-1) if params.top_p < 1.0 else logp.exp()
            tok = _sample(probs, generator)
        tok = tok.masked_fill_(done, pad_id)
        out[:, t] = tok
        out_lp[:, t] = logp.gather(-1, tok[:, None])[:, 0]
        hit = (tok == eos) if len(eos) == 1 else torch.isin(tok, eos)
        for s in stops:
            L = len(s)
            if t + 1 >= L:
                hit |= (out[:, t + 1 - L : t + 1] == s).all(1)
        hits[:, t] = hit
        done |= hit
        if t == N - 1 or bool(done.all()):
            break
        logits = policy.step(tok[:, None], cache)[:, -1].float()

    stopped = hits.any(1)  # a row ends at its first hit ("stop") or runs to the cap ("length")
    length = torch.where(stopped, hits.int().argmax(1) + 1, N)
    out, out_lp, length, stopped = out.cpu(), out_lp.cpu(), length.cpu(), stopped.cpu()
    results = []
    for i in range(B):
        n = int(length[i])
        results.append(
            Completion(
                prompt_ids=list(prompts[i]),
                completion_ids=out[i, :n].clone(),
                logprobs=out_lp[i, :n].clone(),
                finish_reason="stop" if bool(stopped[i]) else "length",
            )
        )
    return results


def cut_at_stop_text(c: Completion, decode: Callable[[list[int]], str], stops: tuple[str, ...]) -> Completion:
    """End `c` at the first token whose text completes a stop string.

    The sampler stops on the stop strings' token sequences, which is exact for a character tokenizer; a BPE
    tokenizer can spell the same text with other tokens (`"\n\n"` as one token or two), so the decoded text
    is checked too and the completion cut after the shortest prefix that contains a stop string.
    """
    ids = c.completion_ids.tolist()
    if not any(s in decode(ids) for s in stops):
        return c
    n = next(k for k in range(1, len(ids) + 1) if any(s in decode(ids[:k]) for s in stops))
    return Completion(c.prompt_ids, c.completion_ids[:n].clone(), c.logprobs[:n].clone(), "stop")
