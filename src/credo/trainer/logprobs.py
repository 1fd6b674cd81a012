"""Per-token log-probs of right-padded sequences under the policy, as the losses need them: the trainer contract.

`sequence_logprobs(policy, input_ids, ...)` returns log π(x_t | x_<t) [B, T] (and token entropies) of the given
tokens, never the `[B, T, V]` log-softmax. A policy that sets `chunkable = True` exposes its body
(`hidden_states(input_ids, images) -> [B, T, D]`) and its LM head (`output_logits(h) -> [..., V]`); the head and
the log-softmax then run on `chunk` positions at a time, each chunk under activation checkpointing, so neither
the forward nor the backward pass holds more than one chunk's logits (the memory of the head is
O(chunk · V) instead of O(B · T · V); cf. the chunked / "fused linear" cross-entropy of Liger-Kernel and
Cut Cross-Entropy, here with plain PyTorch ops and one extra head forward per chunk in the backward).
Other policies (Hugging Face VLMs) are scored from their full `forward` logits, chunked the same way after.

Shared prompts (`share_prefix=True`, `rl.share_prefix`): a GRPO group's rows repeat one prompt. When the policy
has `prefix_hidden_states` (Hugging Face causal LMs) and the rows scored from `positions` share prompts
(`prompt_groups`), each prompt runs once and its rows continue from its keys and values (Prefix Grouper, Liu
et al. 2025, arXiv 2506.05433): the same log-probs up to float rounding, and the prompt tokens' share of the
forward and backward FLOPs divided by the group size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from credo.core.stats import logprobs_from_logits, token_entropy
from credo.models.policy import Policy

DEFAULT_CHUNK = 512  # positions per LM-head chunk: 512 × 49152 float32 logits = 100 MB


def _score_chunk(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(targets) [n] and (without gradient) the entropies [n] (zeros unless `with_entropy`) of the
    positions whose hidden states are `hidden` [n, D]; logits in float32, scaled by 1/temperature."""
    logits = head(hidden).float()  # [n, V]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lp = logprobs_from_logits(logits, targets)  # [n]
    with torch.no_grad():
        ent = token_entropy(logits) if with_entropy else lp.new_zeros(lp.shape)  # [n]
    return lp, ent


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def prompt_groups(input_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                            torch.Tensor] | None:
    """Rows of `input_ids` [B, T] that share a prompt. A row's prompt is its tokens before its first scored
    position (`positions` [B, T]; a row with none scored is all prompt). Returns (prompt length per row [B],
    owner [B]: the index of the row's prompt among the distinct ones, the first row of each distinct prompt [P]),
    or None when no two rows share one (nothing to save)."""
    B, T = input_ids.shape
    scored = positions[:, 1:].bool()  # [B, T-1]: targets 1..T-1
    first = torch.where(scored.any(1), scored.int().argmax(1) + 1, torch.full((B,), T, device=scored.device))
    index: dict[tuple[int, ...], int] = {}
    owner, heads = [], []
    for b, (row, n) in enumerate(zip(input_ids.tolist(), first.tolist(), strict=True)):
        key = tuple(row[:n])
        if key not in index:
            index[key] = len(heads)
            heads.append(b)
        owner.append(index[key])
    if len(heads) == B:
        return None
    return first, torch.tensor(owner), torch.tensor(heads)


def _shared_prefix_states(policy: Policy, input_ids: torch.Tensor,
                          groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Hidden states [B, T, D] of `input_ids` through `policy.prefix_hidden_states`, each shared prompt once
    (`prompt_groups`); the positions past a row's end are the suffix padding's states (never scored)."""
    B, T = input_ids.shape
    device = input_ids.device
    first, owner, heads = (t.to(device) for t in groups)
    lens = first[heads]  # [P]
    Lp, Ls = int(lens.max()), max(1, int((T - first).max()))
    prefix = input_ids[heads, :Lp] * (torch.arange(Lp, device=device)[None, :] < lens[:, None])  # [P, Lp]
    j = torch.arange(Ls, device=device)[None, :]  # [1, Ls]
    src = (first[:, None] + j).clamp(max=T - 1)  # [B, Ls]
    suffix = torch.where(first[:, None] + j < T, input_ids.gather(1, src), 0)  # [B, Ls]
    pre, suf = policy.prefix_hidden_states(prefix, lens, owner, suffix)  # [P, Lp, D], [B, Ls, D]
    both = torch.cat([pre[owner], suf], dim=1)  # [B, Lp + Ls, D]
    t = torch.arange(T, device=device)[None, :]  # [1, T]
    where = torch.where(t < first[:, None], t, Lp + (t - first[:, None]).clamp(max=Ls - 1))  # [B, T]
    return both.gather(1, where[:, :, None].expand(B, T, both.shape[2]))


def sequence_logprobs(
    policy: Policy,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    images: list | None = None,
    positions: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(x_t | x_<t) at every position t ≥ 1 of `input_ids` [B, T] (position 0 gets 0), logits scaled by
    1/temperature exactly as in the sampler; returns logprobs [B, T] (differentiable) and, when `with_entropy`,
    the token entropies [B, T] (detached), else None.

    `images`: per row, the row's images (vision policies). `positions` [B, T] (0/1 or bool, optional): only
    these positions are scored, the others get 0 (the update passes its loss mask: the prompt's logits are never
    computed). `chunk`: positions per LM-head chunk (module docstring); raises ValueError when < 1.
    `share_prefix`: run each prompt shared by several rows once (module docstring), when the policy can
    (`prefix_hidden_states`, `shares_prefix`), there are no images, `positions` is given and rows share prompts.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 positions, got {chunk}")
    B, T = input_ids.shape
    groups = None
    if share_prefix and positions is not None and not (images and any(images)) \
            and getattr(policy, "shares_prefix", False) and getattr(policy, "chunkable", False):
        groups = prompt_groups(input_ids, positions)
    if groups is not None:
        states, head = _shared_prefix_states(policy, input_ids, groups), policy.output_logits  # [B, T, D]
    elif getattr(policy, "chunkable", False):
        states, head = policy.hidden_states(input_ids, images), policy.output_logits  # [B, T, D]
    else:  # full logits from forward; the log-softmax is still chunked
        states = policy.forward(input_ids) if images is None else policy.forward(input_ids, images=images)
        head = _identity  # states: logits [B, T, V]
    sel = torch.ones(B, T - 1, dtype=torch.bool, device=input_ids.device)
    if positions is not None:
        sel = positions[:, 1:].to(device=input_ids.device, dtype=torch.bool)  # [B, T-1]
    hidden = states[:, :-1][sel]  # [N, D]: the states that predict the selected tokens
    targets = input_ids[:, 1:][sel]  # [N]
    grad = torch.is_grad_enabled() and hidden.requires_grad
    lps, ents = [], []
    for start in range(0, max(1, hidden.shape[0]), chunk):  # once even when empty: the result keeps its graph
        h, y = hidden[start : start + chunk], targets[start : start + chunk]
        if grad:  # keep only h; the chunk's logits are recomputed in the backward pass
            lp, ent = checkpoint(_score_chunk, head, h, y, temperature, with_entropy, use_reentrant=False)
        else:
            lp, ent = _score_chunk(head, h, y, temperature, with_entropy)
        lps.append(lp)
        ents.append(ent)
    zeros = torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)
    full_sel = torch.cat([sel.new_zeros(B, 1), sel], dim=1)  # [B, T]
    flat_lp = torch.cat(lps)
    logprobs = zeros.masked_scatter(full_sel, flat_lp)  # [B, T]
    entropy = None
    if with_entropy:
        entropy = zeros.masked_scatter(full_sel, torch.cat(ents))  # [B, T]
    return logprobs, entropy
