"""Attention over packed rows of prompt-sharing continuations, without the masked-out work of a block mask.

A packed row (`trainer.logprobs.pack_groups`) is one prompt (segment 0) followed by several continuations of it
(segments 1, 2, …; −1: padding): a continuation's token attends to the prompt and to the earlier tokens of its own
continuation. Given to the attention as an [S, S] block mask, every pair of the row is computed and most are then
masked out: a row of 8 continuations of 64 tokens behind a 40-token prompt computes (40 + 512)² ≈ 305k scores per
head, of which ≈ 45k are kept. Here each token is gathered into a slot of two padded blocks instead, and each
attends only to its own keys:

- the prompt block [rows, Lp]: a prompt's tokens, causally over the prompt;
- the continuation block [rows, M, Lc]: a continuation's tokens over [its prompt, itself], causally (query i of a
  continuation of a prompt of P tokens sees keys 0..P+i): each continuation's keys are its prompt's (a copy per
  continuation, Lp · d numbers per key head) followed by its own.

Each block runs through PyTorch's fused `scaled_dot_product_attention` with the block's additive mask (on a CPU its
flash kernel: no [queries, keys] probabilities kept for the backward pass, which recomputes them; measured ~1.4×
faster forward and ~1.25× backward than the earlier cascade of separate products and softmax, at the update's shape
of `benchmarks/real_model.py`: 8 rows × 8 continuations of ≤ 64 tokens behind 42-token prompts, 9 query and 3 key
heads). Grouped-query attention is the kernel's own (`enable_gqa`), so keys and values are never repeated per head.
Every token fills exactly one slot. The rows also lose their padding: all packed rows
run as one row of their real tokens (`flatten`), so the linear layers never see a padding token either. The same
numbers as the block mask up to float rounding (tests/test_prefix_attention.py); the layout of Prefix Grouper (Liu et
al. 2025, arXiv 2506.05433).

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
class PrefixLayout:
    """Where the tokens of a flat row of N tokens sit in the attention's padded blocks, for R packed rows of at most
    M continuations each (prompts padded to Lp tokens, continuations to Lc):

    - `slots` [R·Lp + R·M·Lc]: the flat token in each slot, the prompt block [R, Lp] then the continuation block
      [R, M, Lc] (padding slots: token 0; their outputs are dropped and every key among them is masked out);
    - `out_index` [N]: each token's slot (every token fills exactly one);
    - `prompt_bias` [R, 1, Lp, Lp]: 0 or −inf, a prompt's causal attention over its real tokens;
    - `cont_bias` [R·M, 1, Lc, Lp + Lc]: continuation m of row r (index r·M + m) over its prompt's real tokens, then
      causally over its own (padding queries see their prompt, so no row of scores is all −inf)."""

    slots: torch.Tensor
    out_index: torch.Tensor
    prompt_bias: torch.Tensor
    cont_bias: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(R, Lp, M, Lc)."""
        R, Lp = self.prompt_bias.shape[0], self.prompt_bias.shape[-1]
        return R, Lp, self.cont_bias.shape[0] // max(R, 1), self.cont_bias.shape[2]


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


def _rows(segments: torch.Tensor) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Each packed row's prompt and continuations as flat (start, end) ranges; ValueError on a row that does not
    start with its prompt or a segment that is not contiguous."""
    rows: dict[int, tuple[tuple[int, int], list[tuple[int, int]]]] = {}
    seen: set[tuple[int, int]] = set()
    for row, seg, a, b in _runs(segments):
        if (row, seg) in seen:
            raise ValueError(f"packed row {row}: segment {seg} is not contiguous")
        seen.add((row, seg))
        if seg == 0:
            rows[row] = ((a, b), [])
        elif row not in rows:
            raise ValueError(f"packed row {row}: does not start with its prompt (segment 0)")
        else:
            rows[row][1].append((a, b))
    return list(rows.values())


def flatten(segments: torch.Tensor) -> tuple[torch.Tensor, PrefixLayout]:
    """The real tokens of packed rows `segments` [n, S] (0: the row's prompt, at its start; k > 0: a continuation,
    contiguous; −1: padding) as one flat row: returns (`keep` [n, S] bool: the tokens kept, in row-major order,
    and their `PrefixLayout`). Raises ValueError when a row does not start with its prompt or a segment's tokens
    are not contiguous."""
    dev = segments.device
    rows = _rows(segments)
    R = len(rows)
    Lp = max((b - a for (a, b), _ in rows), default=0)
    M = max((len(c) for _, c in rows), default=0)
    Lc = max((b - a for _, c in rows for a, b in c), default=0)
    prompt_slots = torch.zeros(R, Lp, dtype=torch.long)
    cont_slots = torch.zeros(R, M, Lc, dtype=torch.long)
    p_len = torch.zeros(R, dtype=torch.long)
    c_len = torch.zeros(R, M, dtype=torch.long)
    for r, ((a, b), conts) in enumerate(rows):
        prompt_slots[r, : b - a], p_len[r] = torch.arange(a, b), b - a
        for m, (ca, cb) in enumerate(conts):
            cont_slots[r, m, : cb - ca], c_len[r, m] = torch.arange(ca, cb), cb - ca
    slots = torch.cat([prompt_slots.flatten(), cont_slots.flatten()])
    real = torch.cat([(torch.arange(Lp) < p_len[:, None]).flatten(),
                      (torch.arange(Lc) < c_len[..., None]).flatten()])
    n_tokens = int(real.sum())
    out_index = torch.empty(n_tokens, dtype=torch.long)
    out_index[slots[real]] = torch.arange(slots.numel())[real]
    i, j = torch.arange(Lp)[:, None], torch.arange(Lp)[None, :]
    prompt_ok = (j <= i) & (j < p_len[:, None, None])  # [R, Lp, Lp]
    ic, jc = torch.arange(Lc)[:, None], torch.arange(Lc)[None, :]
    own_ok = (jc <= ic) & (jc < c_len[..., None, None])  # [R, M, Lc, Lc]
    sees_prompt = (torch.arange(Lp) < p_len[:, None])[:, None, None, :].expand(R, M, Lc, Lp)
    cont_ok = torch.cat([sees_prompt, own_ok], -1)  # [R, M, Lc, Lp + Lc]

    def bias(ok: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ok.shape).masked_fill_(~ok, float("-inf")).to(dev)

    layout = PrefixLayout(slots.to(dev), out_index.to(dev), bias(prompt_ok)[:, None],
                          bias(cont_ok).view(R * M, 1, Lc, Lp + Lc))
    return segments >= 0, layout


def prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: PrefixLayout,
                     scaling: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Attention of a flat row laid out by `layout`, token-major: `query` [N, H, d], `key`, `value` [N, Hkv, d]
    (grouped query attention when Hkv < H: query head h reads key head h // (H / Hkv), as transformers'
    `repeat_kv`). Returns [N, H, d].

    Two fused attentions (`F.scaled_dot_product_attention`, module docstring): the prompts [R, H, Lp, d] over
    themselves, and the continuations [R·M, H, Lc, d] over [their prompt's keys, their own]; each token's
    [heads, d] row is gathered into its slot whole. `scaling`: the scores' scale (1/√d when None); `dropout`:
    attention dropout on the probabilities (sdpa's `dropout_p`)."""
    H, d = query.shape[1:]
    Hkv = key.shape[1]
    R, Lp, M, Lc = layout.shape
    P = R * Lp
    q = query.index_select(0, layout.slots)  # [Ns, H, d]
    k, v = key.index_select(0, layout.slots), value.index_select(0, layout.slots)  # [Ns, Hkv, d]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=scaling,
                                              enable_gqa=H != Hkv)

    qp = q[:P].view(R, Lp, H, d).transpose(1, 2)  # [R, H, Lp, d]
    kp, vp = (x[:P].view(R, Lp, Hkv, d).transpose(1, 2) for x in (k, v))  # [R, Hkv, Lp, d]
    op = attend(qp, kp, vp, layout.prompt_bias).transpose(1, 2).reshape(P, H, d)
    if M == 0:
        return op.index_select(0, layout.out_index)
    qc = q[P:].view(R * M, Lc, H, d).transpose(1, 2)  # [R·M, H, Lc, d]

    def keys(prompt: torch.Tensor, own: torch.Tensor) -> torch.Tensor:  # [R·M, Hkv, Lp + Lc, d]
        own = own.view(R, M, Lc, Hkv, d).permute(0, 1, 3, 2, 4)  # [R, M, Hkv, Lc, d]
        return torch.cat([prompt[:, None].expand(R, M, Hkv, Lp, d), own], 3).view(R * M, Hkv, Lp + Lc, d)

    oc = attend(qc, keys(kp, k[P:]), keys(vp, v[P:]), layout.cont_bias)  # [R·M, H, Lc, d]
    oc = oc.transpose(1, 2).reshape(R * M * Lc, H, d)
    return torch.cat([op, oc]).index_select(0, layout.out_index)  # [N, H, d]


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               credo_prefix_layout: PrefixLayout | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The registered attention function (module docstring): transformers' sdpa unless a layout is passed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if credo_prefix_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [1, heads, N, d] -> [N, heads, d] views
    return prefix_attention(q, k, v, credo_prefix_layout, scaling, dropout).unsqueeze(0), None


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
