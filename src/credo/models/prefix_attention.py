"""Attention over packed rows of prompt-sharing continuations, without the masked-out work of a block mask.

A packed row (`trainer.logprobs.pack_groups`) is one prompt (segment 0) followed by several continuations of it
(segments 1, 2, …; −1: padding): a continuation's token attends to the prompt and to the earlier tokens of its own
continuation. Given to the attention as an [S, S] block mask, every pair of the row is computed and most are then
masked out: a row of 8 continuations of 64 tokens behind a 40-token prompt computes (40 + 512)² ≈ 305k scores per
head, of which ≈ 45k are kept. Here the queries and keys are gathered per unit instead, and each unit attends
only to its own keys:

- a prompt unit: the prompt's tokens, causally over the prompt;
- a continuation unit: the continuation's tokens over [prompt, continuation], causally (query i of a continuation
  of a prompt of P tokens sees keys 0..P+i).

Units of a kind are padded to the longest of their kind and run as one batched `scaled_dot_product_attention`
call (two calls per layer). The rows also lose their padding: all packed rows run as one row of their real tokens
(`flatten`), so the linear layers never see a padding token either. The same numbers as the block mask up to
float rounding (tests/test_prefix_attention.py); the layout of Prefix Grouper (Liu et al. 2025, arXiv 2506.05433), the
gather-per-unit in the spirit of variable-length ("varlen") attention kernels, here in plain PyTorch.

Transformers' attention functions are chosen by name (`AttentionInterface`): `ATTENTION` ("credo_sdpa") is
transformers' own "sdpa" function unless the call carries a `PrefixLayout` (`credo_prefix_layout=` keyword, which the
decoder passes down to every attention layer), with sdpa's mask function (`use_prefix_attention`). The choice is
carried by the call's arguments, not by global state, so that activation checkpointing's recomputation and
FSDP2's per-layer forwards take the same path as the first forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "credo_sdpa"  # the registered name: transformers' sdpa + prefix attention when a layout is passed


@dataclasses.dataclass(frozen=True)
class Block:
    """Units of one kind, padded: `q_index` [U, Lq] and `k_index` [U, Lk] index the flat row's tokens (padding: 0),
    `mask` [U, 1, Lq, Lk] (bool) the pairs each query may attend to."""

    q_index: torch.Tensor
    k_index: torch.Tensor
    mask: torch.Tensor


@dataclasses.dataclass(frozen=True)
class PrefixLayout:
    """The units of a flat row of N tokens: `blocks`, and `out_index` [N]: each token's row in the blocks' outputs
    laid end to end ([Σ U · Lq]; every token is the query of exactly one unit)."""

    blocks: tuple[Block, ...]
    out_index: torch.Tensor


def _block(units: list[tuple[torch.Tensor, torch.Tensor, int]], device: torch.device) -> Block:
    """A block of units (query indices [l], key indices [m], the key position of query 0)."""
    Lq = max(len(q) for q, _, _ in units)
    Lk = max(len(k) for _, k, _ in units)
    q_index = torch.zeros(len(units), Lq, dtype=torch.long, device=device)
    k_index = torch.zeros(len(units), Lk, dtype=torch.long, device=device)
    i = torch.arange(Lq, device=device)[:, None]  # [Lq, 1]
    j = torch.arange(Lk, device=device)[None, :]  # [1, Lk]
    masks = []
    for u, (q, k, offset) in enumerate(units):
        q_index[u, : len(q)] = q
        k_index[u, : len(k)] = k
        masks.append((j <= offset + i) & (j < len(k)))  # padded queries see every real key (never all-masked)
    return Block(q_index, k_index, torch.stack(masks)[:, None])


def _runs(segments: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """The runs of equal segment ids of each packed row's real tokens, as (row, segment, flat start, flat end)
    over the row-major flat order of the tokens with segment ≥ 0."""
    runs: list[tuple[int, int, int, int]] = []
    start = 0
    for r, row in enumerate(segments.tolist()):
        real = [s for s in row if s >= 0]
        a = 0
        for b in range(1, len(real) + 1):
            if b == len(real) or real[b] != real[a]:
                runs.append((r, real[a], start + a, start + b))
                a = b
        start += len(real)
    return runs


def flatten(segments: torch.Tensor) -> tuple[torch.Tensor, PrefixLayout]:
    """The real tokens of packed rows `segments` [n, S] (0: the row's prompt, at its start; k > 0: a continuation,
    contiguous; −1: padding) as one flat row: returns (`keep` [n, S] bool: the tokens kept, in row-major order,
    and their `PrefixLayout`). Raises ValueError when a row does not start with its prompt or a segment's tokens
    are not contiguous."""
    dev = segments.device
    units: tuple[list, list] = ([], [])  # prompt units, continuation units: (queries, keys, key pos of query 0)
    seen: set[tuple[int, int]] = set()
    prompt, prompt_row = torch.zeros(0, dtype=torch.long, device=dev), -1
    for row, seg, a, b in _runs(segments):
        if (row, seg) in seen:
            raise ValueError(f"packed row {row}: segment {seg} is not contiguous")
        seen.add((row, seg))
        idx = torch.arange(a, b, device=dev)
        if seg == 0:
            prompt, prompt_row = idx, row
            units[0].append((idx, idx, 0))
        elif prompt_row != row:
            raise ValueError(f"packed row {row}: does not start with its prompt (segment 0)")
        else:
            units[1].append((idx, torch.cat([prompt, idx]), len(prompt)))
    kinds = [u for u in units if u]
    blocks = tuple(_block(u, dev) for u in kinds)
    n_tokens = sum(len(q) for u in kinds for q, _, _ in u)
    out_index = torch.empty(n_tokens, dtype=torch.long, device=dev)
    base = 0
    for blk, u in zip(blocks, kinds, strict=True):
        Lq = blk.q_index.shape[1]
        for k, (q, _, _) in enumerate(u):
            out_index[q] = base + k * Lq + torch.arange(len(q), device=dev)
        base += blk.q_index.numel()
    return segments >= 0, PrefixLayout(blocks, out_index)


def prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: PrefixLayout,
                      scaling: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Attention of a flat row laid out by `layout`: `query` [1, H, N, d], `key`, `value` [1, Hkv, N, d] (grouped
    query attention when Hkv < H: query head h reads key head h // (H / Hkv), as transformers' `repeat_kv`).
    Returns [1, N, H, d] (the layout transformers' attention functions return)."""
    H, N, d = query.shape[1:]
    rep = H // key.shape[1]
    q, k, v = query[0], key[0], value[0]  # [H, N, d], [Hkv, N, d]
    outs = []
    for blk in layout.blocks:
        qu = q[:, blk.q_index].transpose(0, 1)  # [U, H, Lq, d]
        ku, vu = (x[:, blk.k_index].transpose(0, 1) for x in (k, v))  # [U, Hkv, Lk, d]
        if rep > 1:
            ku, vu = ku.repeat_interleave(rep, dim=1), vu.repeat_interleave(rep, dim=1)  # [U, H, Lk, d]
        o = F.scaled_dot_product_attention(qu, ku, vu, attn_mask=blk.mask, dropout_p=dropout, scale=scaling)
        outs.append(o.transpose(1, 2).reshape(-1, H, d))  # [U · Lq, H, d]
    return torch.cat(outs)[layout.out_index].unsqueeze(0)  # [1, N, H, d]


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               credo_prefix_layout: PrefixLayout | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The registered attention function (module docstring): transformers' sdpa unless a layout is passed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if credo_prefix_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return prefix_attention(query, key, value, credo_prefix_layout, scaling, dropout), None


def use_prefix_attention(model: Any) -> bool:
    """Switch a transformers model whose attention is "sdpa" to `ATTENTION` (registered once, with sdpa's mask
    function): the same numbers on every call that carries no layout. Returns whether the model now runs it."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # a transformers without the attention and mask registries: the block mask
        return False
    config = model.config
    if getattr(config, "_attn_implementation", None) == ATTENTION:
        return True
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config._attn_implementation = ATTENTION
    return True
