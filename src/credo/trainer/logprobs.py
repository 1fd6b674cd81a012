"""Per-token log-probs of right-padded sequences under the policy, as the losses need them: the trainer contract.

`sequence_logprobs(policy, input_ids, ...)` returns log π(x_t | x_<t) [B, T] (and token entropies) of the given
tokens, never the `[B, T, V]` log-softmax. A policy that sets `chunkable = True` exposes its body
(`hidden_states(input_ids, images) -> [B, T, D]`) and its LM head (`output_logits(h) -> [..., V]`); the head and
the log-softmax then run on `chunk` positions at a time, each chunk under activation checkpointing, so neither
the forward nor the backward pass holds more than one chunk's logits (the memory of the head is
O(chunk · V) instead of O(B · T · V); cf. the chunked / "fused linear" cross-entropy of Liger-Kernel and
Cut Cross-Entropy, here with plain PyTorch ops and one extra head forward per chunk in the backward). A policy
whose head is a bias-free linear layer (`lm_head()`: Hugging Face models outside FSDP2) runs its chunks through
one `_HeadLogprob` node, whose backward is written out (the logits' gradient g · (onehot − softmax) / T built in
place in the logits' buffer, the entropy computed once, the head weight's gradient summed in one buffer; on a CPU
in float32 the logits' products on a packed weight, `models.packed`, one vocabulary tile at a time, the softmax's
sums accumulated over the tiles online), instead of autograd over each checkpointed chunk.
Other policies (Hugging Face VLMs) are scored from their full `forward` logits, chunked the same way after.

Shared prompts (`share_prefix`, `rl.share_prefix`): a GRPO group's rows repeat one prompt; when the rows scored
from `positions` share prompts (`prompt_groups`), each prompt runs once (Prefix Grouper, Liu et al. 2025, arXiv
2506.05433): the same log-probs up to float rounding, and the prompt tokens' share of the forward and backward
FLOPs divided by the group size. Two ways, by `share_prefix`:
- "cache" (Hugging Face causal LMs without activation checkpointing, `prefix_hidden_states`): the prompts run
  once, and their keys and values (kept in the autograd graph) are gathered to the rows, whose continuations
  run on them — two decoder forwards, no wasted attention.
- "pack" (`packed_hidden_states`, also under activation checkpointing, which turns transformers' KV cache off in
  training): a group's rows are laid out behind one copy of their prompt, up to `pack_tokens` tokens per packed
  row (`pack_groups`), each continuation seeing the prompt and itself; one decoder forward (so FSDP2's per-layer
  gathers are those of a plain forward). Hugging Face models with the sdpa attention run the packed rows' real
  tokens as one row, each prompt and continuation over its own keys (`models.prefix_attention`); others (eager,
  TinyLM) take a block mask, at the price of attention over the whole packed row (O(S²) per packed row of S
  tokens, masked), which `pack_tokens` bounds.
- "auto": "pack" when every group fits in one packed row (measured faster than "cache" there: one forward, no
  padding between a group's rows; `benchmarks/shared_prefix.py`), else "cache" where the policy can run it, else
  "pack". "off": the plain forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from credo.core.stats import logprobs_from_logits, token_entropy
from credo.models.packed import pack
from credo.models.policy import Policy

DEFAULT_CHUNK = 512  # positions per LM-head chunk: 512 × 49152 float32 logits = 100 MB
DEFAULT_PACK_TOKENS = 1024  # tokens per packed row ("pack"): masked attention ≤ ~1/3 of SmolLM2-135M's matmuls
SHARE_MODES = ("off", "auto", "cache", "pack")


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


class _HeadLogprob(torch.autograd.Function):
    """log π(targets) [N] and (no gradient) the entropies [N] of hidden states [N, D] through a bias-free LM head
    (weight [V, D]), `chunk` positions at a time, the backward written out: logits = h Wᵀ / T (in the head's compute
    dtype, then float32), lse = logsumexp(logits), log π(y) = logits_y − lse, H = lse − Σ_v p_v logits_v; only h, W,
    y and lse [N] are kept. The backward recomputes each chunk's logits (one matmul), turns them in place into
    g · (onehot(y) − softmax) / T, the gradient of the logits, and multiplies it with W (→ ∂h) and h (→ ∂W, summed
    into one [V, D] buffer over the chunks). In float32 on a CPU the logits' product runs on a copy of W packed once
    per pass (`models.packed`: MKL's packed GEMM at [512, 576] × [576, 49152] ran at 275 GFLOP/s on the 2-core Xeon
    against 244 for `h @ W.t()`, whose kernel lays W out anew on every call, and 242 on oneDNN's packing), one tile of
    VOCAB_BLOCK vocabulary entries at a time (`_LinearHead`), the log-sum-exp and entropy accumulated over the tiles
    online (`_tile_stats`). The autograd of `_score_chunk` under checkpointing runs the same three matmuls per
    chunk but the log-sum-exp and entropy twice, each elementwise step into a fresh [n, V] tensor and one [V, D]
    gradient per chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool, dtype: torch.dtype, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        N = hidden.shape[0]
        head = _LinearHead(weight, dtype, temperature, min(chunk, N))
        lp, ent, lse = (hidden.new_zeros(N, dtype=torch.float32) for _ in range(3))
        for s in range(0, N, chunk):
            lp[s : s + chunk], ent[s : s + chunk], lse[s : s + chunk] = _tile_stats(
                head, hidden[s : s + chunk], targets[s : s + chunk], with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.dtype, ctx.chunk = temperature, dtype, chunk
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx: Any, grad_lp: torch.Tensor, _grad_ent: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        T, chunk, N = ctx.temperature, ctx.chunk, hidden.shape[0]
        head = _LinearHead(weight, ctx.dtype, T, min(chunk, N))
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, N, chunk):
            h, g_lp, y = hidden[s : s + chunk], grad_lp[s : s + chunk, None], targets[s : s + chunk]  # [n, D], [n, 1]
            g_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) \
                if grad_h is not None and len(head.blocks) > 1 else None
            for v0, w, grad in head.tiles(h):  # grad: the tile's logits [n, b], turned into their gradient
                grad.sub_(lse[s : s + chunk, None]).exp_().mul_(-g_lp)  # −g · softmax
                b = grad.shape[1]
                inside = (y >= v0) & (y < v0 + b)  # [n]: the rows whose target is in this tile (no host sync)
                grad.scatter_add_(1, (y - v0).clamp(0, b - 1)[:, None], g_lp * inside[:, None])  # + g · onehot(y)
                if T > 0 and T != 1.0:
                    grad.div_(T)
                with torch.autocast(hidden.device.type, enabled=False):
                    g = grad.to(ctx.dtype)
                    if grad_h is not None and g_h is None:  # one tile: the product in the compute dtype
                        grad_h[s : s + chunk] = g @ w
                    elif grad_h is not None:  # float32 tiles (`_LinearHead`): summed in float32
                        g_h.addmm_(g, w)
                    if grad_w is not None and g.dtype == torch.float32:
                        grad_w[v0 : v0 + b].addmm_(g.t(), h.float())
                    elif grad_w is not None:
                        grad_w[v0 : v0 + b] += (g.t() @ h.to(ctx.dtype)).float()
            if grad_h is not None and g_h is not None:
                grad_h[s : s + chunk] = g_h
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None


VOCAB_BLOCK = 4096  # vocabulary entries per float32 LM-head tile on a CPU (`_LinearHead`): [512, 4096] is 8 MB


class _LinearHead:
    """Logits h Wᵀ / T (float32) of a bias-free head W [V, D] in the compute dtype `dtype` (as `F.linear` under
    autocast), one vocabulary tile at a time (`tiles`). In float32 on a CPU the tiles are VOCAB_BLOCK entries
    wide and each multiplies by a packed copy of its rows of W laid out for `rows` rows (`models.packed.pack`:
    MKL's on an Intel CPU, where a chunk of another row count, the last, runs plainly; oneDNN's elsewhere): a
    [512, 4096] tile (8 MB) reuses freed heap memory, where a [512, 49152] one (100 MB) is fresh pages every time
    (`trainer.host_memory`); on the 2-core Xeon the products of a 512-row chunk took 79 ms in tiles against 96 ms
    whole, and the head's forward and backward over 3792 positions 2.84 s against 3.46 s (`benchmarks/lm_head.py`,
    session 25). Otherwise one tile of all V entries, a plain product."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, temperature: float, rows: int) -> None:
        self.weight = weight.detach().to(dtype)  # [V, D] in the compute dtype
        self.temperature = temperature
        tiled = dtype == torch.float32 and weight.device.type == "cpu"
        block = VOCAB_BLOCK if tiled else self.weight.shape[0]
        self.blocks = [self.weight[v : v + block] for v in range(0, self.weight.shape[0], block)]  # views [b, D]
        self.packed = pack(self.blocks, rows) if rows > 0 and tiled else None  # float32 only: never bf16 emulation

    def tiles(self, hidden: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(v0, W's rows [v0, v0 + b) [b, D], the logits of those entries [n, b] float32 — the caller's to
        overwrite) for each tile, in vocabulary order, of hidden [n, D]."""
        x = hidden.detach().to(self.weight.dtype)
        v0 = 0
        for w in self.blocks:
            with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
                logits = self.packed.linear(x, w) if self.packed is not None else (x @ w.t()).float()
                if self.temperature > 0 and self.temperature != 1.0:
                    logits = logits.div_(self.temperature)
            yield v0, w, logits
            v0 += w.shape[0]


def _tile_stats(head: _LinearHead, hidden: torch.Tensor, targets: torch.Tensor,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(targets) [n], the entropies [n] (zeros unless `with_entropy`) and the logsumexp [n] of the logits of
    hidden [n, D] (`head.tiles`), accumulated over the vocabulary tiles online (as flash attention's softmax).
    Relative to the running max M: S = Σ e^(x − M), E = Σ e^(x − M) (x − M); a tile with a larger max M' rescales
    them by c = e^(M − M'): S ← c S, E ← c (E + S (M − M')), and the tile's own sums are added. Then
    lse = M + log S, log p(y) = x_y − lse and H = −Σ p log p = log S − E / S (one exponential pass for both).
    Raises ValueError for a target outside [0, V) when there are several tiles (one tile: `gather`'s own error)."""
    m = s = e_sum = None
    x_y = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    tiled = len(head.blocks) > 1
    if tiled and targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < head.weight.shape[0]):
        raise ValueError(f"targets outside the vocabulary [0, {head.weight.shape[0]})")
    for v0, _, x in head.tiles(hidden):
        b = x.shape[1]
        if tiled:
            inside = (targets >= v0) & (targets < v0 + b)
            x_y = torch.where(inside, x.gather(1, (targets - v0).clamp(0, b - 1)[:, None])[:, 0], x_y)
        else:
            x_y = x.gather(1, targets[:, None])[:, 0]
        new_m = x.amax(-1) if m is None else torch.maximum(m, x.amax(-1))  # [n]
        x = x.sub_(new_m[:, None])  # x − M' ≤ 0
        if with_entropy:
            e = torch.exp(x)
            tile_s, tile_e = e.sum(-1), torch.bmm(e[:, None, :], x[:, :, None]).view(-1)
        else:
            tile_s, tile_e = x.exp_().sum(-1), None
        if m is None:
            s, e_sum = tile_s, tile_e
        else:
            c = (m - new_m).exp()
            if with_entropy:
                e_sum = c * (e_sum + s * (m - new_m)) + tile_e
            s = c * s + tile_s
        m = new_m
    log_s = s.log()
    lse = m + log_s
    ent = log_s - e_sum / s if with_entropy else torch.zeros_like(lse)
    return x_y - lse, ent, lse


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


@dataclasses.dataclass(frozen=True)
class Packing:
    """Rows laid out behind shared prompts (`pack_groups`): `input_ids`, `position_ids`, `segments` [n, S] for
    `packed_hidden_states`, and `where` [B, T]: the flat index (pack · S + column) of each row position's state;
    positions past a row's last scored token (never read) point at 0; `split`: some group took more than one
    packed row (its rows did not fit in `pack_tokens`)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    where: torch.Tensor
    split: bool = False


def pack_groups(input_ids: torch.Tensor, positions: torch.Tensor,
                groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pack_tokens: int) -> Packing | None:
    """Pack the rows of `input_ids` [B, T] that share prompts (`groups` from `prompt_groups`) behind one copy of
    their prompt: a packed row is [prompt, row a's tokens after it, row b's, …] up to `pack_tokens` tokens (a row
    that does not fit starts a new packed row with the prompt again; a row longer than that alone). A row
    contributes its tokens up to its last scored position (`positions` [B, T]; the states after it are never
    read); rows with nothing scored are left out. Returns None when nothing is scored."""
    B, T = input_ids.shape
    first, owner, heads = groups
    scored = positions[:, 1:].bool()  # [B, T-1]: targets 1..T-1
    last = torch.where(scored.any(1), T - 1 - scored.flip(1).int().argmax(1), -1).tolist()  # [B]
    ids, first_l, owner_l = input_ids.tolist(), first.tolist(), owner.tolist()
    packs: list[tuple[list[int], list[int], list[int]]] = []  # (tokens, segments, positions)
    split = False
    place: list[tuple[int, int]] = [(-1, 0)] * B  # row → (pack, column of its first token after the prompt)
    for g, head in enumerate(heads.tolist()):
        f, cur = first_l[head], -1
        for b in (i for i in range(B) if owner_l[i] == g and last[i] >= f):
            n = last[b] - f  # the row's tokens first..last-1 (the state at `last` predicts nothing scored)
            if cur < 0 or (len(packs[cur][0]) + n > pack_tokens and len(packs[cur][0]) > f):
                split = split or cur >= 0
                packs.append((ids[head][:f], [0] * f, list(range(f))))
                cur = len(packs) - 1
            tokens, segs, pos = packs[cur]
            place[b] = (cur, len(tokens))
            tokens += ids[b][f : last[b]]
            segs += [b + 1] * n
            pos += range(f, last[b])
    if not packs:
        return None
    S = max(len(p[0]) for p in packs)
    pad = [(t + [0] * (S - len(t)), p + [0] * (S - len(p)), s + [-1] * (S - len(s))) for t, s, p in packs]
    dev = input_ids.device
    t = torch.arange(T, device=dev)[None, :]  # [1, T]
    pack = torch.tensor([p for p, _ in place], device=dev)[:, None]  # [B, 1]
    col = torch.tensor([c for _, c in place], device=dev)[:, None]  # [B, 1]
    f = first.to(dev)[:, None]
    local = torch.where(t < f, t, col + t - f).clamp(0, S - 1)
    where = torch.where(pack >= 0, pack.clamp(min=0) * S + local, 0)  # [B, T]
    return Packing(*(torch.tensor([x[i] for x in pad], device=dev) for i in range(3)), where=where, split=split)


def _packed_prefix_states(policy: Policy, packing: Packing) -> torch.Tensor:
    """Hidden states [B, T, D] of the packed rows' sequences through `policy.packed_hidden_states`."""
    states = policy.packed_hidden_states(packing.input_ids, packing.position_ids, packing.segments)  # [n, S, D]
    return states.reshape(-1, states.shape[-1])[packing.where]  # [B, T, D]


def _states(policy: Policy, input_ids: torch.Tensor, images: list | None, positions: torch.Tensor | None,
            share_prefix: str, pack_tokens: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The states that the head turns into logits [B, T, ·] and the head (module docstring for the modes)."""
    if share_prefix not in SHARE_MODES:
        raise ValueError(f"share_prefix {share_prefix!r}: choose one of {SHARE_MODES}")
    if share_prefix != "off" and positions is not None and not (images and any(images)) \
            and getattr(policy, "chunkable", False):
        cache = getattr(policy, "shares_prefix", False) and share_prefix in ("auto", "cache")
        pack = getattr(policy, "packs_prefix", False) and pack_tokens > 0 and share_prefix in ("auto", "pack")
        groups = prompt_groups(input_ids, positions) if cache or pack else None
        packing = pack_groups(input_ids, positions, groups, pack_tokens) if groups is not None and pack else None
        if packing is not None and not (cache and packing.split):  # "auto": packs unless a group needs two
            return _packed_prefix_states(policy, packing), policy.output_logits
        if groups is not None and cache:
            return _shared_prefix_states(policy, input_ids, groups), policy.output_logits
    if getattr(policy, "chunkable", False):
        return policy.hidden_states(input_ids, images), policy.output_logits  # [B, T, D]
    # full logits from forward; the log-softmax is still chunked
    return (policy.forward(input_ids) if images is None else policy.forward(input_ids, images=images)), _identity


def sequence_logprobs(
    policy: Policy,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    images: list | None = None,
    positions: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    share_prefix: str = "off",
    pack_tokens: int = DEFAULT_PACK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(x_t | x_<t) at every position t ≥ 1 of `input_ids` [B, T] (position 0 gets 0), logits scaled by
    1/temperature exactly as in the sampler; returns logprobs [B, T] (differentiable) and, when `with_entropy`,
    the token entropies [B, T] (detached), else None.

    `images`: per row, the row's images (vision policies). `positions` [B, T] (0/1 or bool, optional): only
    these positions are scored, the others get 0 (the update passes its loss mask: the prompt's logits are never
    computed). `chunk`: positions per LM-head chunk (module docstring); raises ValueError when < 1.
    `share_prefix` ("off", "auto", "cache", "pack"; ValueError otherwise): run each prompt shared by several
    rows once (module docstring), when the policy can, there are no images, `positions` is given and rows share
    prompts; `pack_tokens`: the longest packed row ("pack"; 0 turns packing off).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 positions, got {chunk}")
    B, T = input_ids.shape
    states, head = _states(policy, input_ids, images, positions, share_prefix, pack_tokens)  # [B, T, D or V]
    sel = torch.ones(B, T - 1, dtype=torch.bool, device=input_ids.device)
    if positions is not None:
        sel = positions[:, 1:].to(device=input_ids.device, dtype=torch.bool)  # [B, T-1]
    hidden = states[:, :-1][sel]  # [N, D]: the states that predict the selected tokens
    targets = input_ids[:, 1:][sel]  # [N]
    grad = torch.is_grad_enabled() and hidden.requires_grad
    plain = getattr(policy, "lm_head", None) if head is not _identity else None
    linear = plain() if callable(plain) else None  # (weight [V, D], compute dtype) of a bias-free linear head
    lps, ents = [], []
    if linear is not None:  # all chunks in one autograd node (one ∂W buffer, one packed head per pass)
        lp, ent = _HeadLogprob.apply(hidden, linear[0], targets, temperature, with_entropy, linear[1], chunk)
        lps, ents = [lp], [ent]
    for start in range(0, max(1, hidden.shape[0]) if linear is None else 0, chunk):  # once even when empty: the
        h, y = hidden[start : start + chunk], targets[start : start + chunk]  # result keeps its graph
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
