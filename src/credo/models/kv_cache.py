"""The native engine's KV cache: one flat buffer per keys / values, grown in CACHE_BLOCK-slot steps in place, with
rows copied for shared prompts (`select_rows`) and finished rows dropped in place (`keep_rows`). `models.tiny.TinyLM`
fills it (`new_cache`, `step`); the sampler (`rollout.sampler`) moves its rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CACHE_BLOCK = 32  # KV cache storage grows by this many slots at a time (see `KVCache`)


@dataclass
class KVCache:
    """Keys/values of every layer, plus which slots hold real (non-pad) tokens.

    `k` and `v` hold `capacity` slots per row, grown `CACHE_BLOCK` at a time up to `max_len` (the room asked
    for), and a decode step attends over all of them, masking empty slots. Slicing the filled prefix out of
    max_len slots per row instead hands the attention B·H short strided chunks per layer, which a CPU reads
    far slower than one block (4 layers, 64 rows, 81 of 145 slots: 3.3 ms, against 1.9 ms for all 145 slots
    in one block); that outweighs reading up to CACHE_BLOCK - 1 empty slots here. `k` and `v` are views of
    the start of flat buffers sized for max_len, re-laid out in place as they grow: fresh buffers at every
    growth cost 46 ms per 64-row, 128-token rollout in copies and page faults, in place 26 ms.
    """

    k: torch.Tensor  # [L, B, Hkv, capacity, Dh], a view of k_buf; empty slots are zero
    v: torch.Tensor  # [L, B, Hkv, capacity, Dh], a view of v_buf
    k_buf: torch.Tensor  # [L·B·Hkv·max_len·Dh]
    v_buf: torch.Tensor
    key_valid: torch.Tensor  # [B, capacity] bool; False for pad and empty slots
    next_pos: torch.Tensor  # [B] long, RoPE position of the next token of each row
    max_len: int  # slots the cache may grow to
    length: int = 0  # slots filled so far
    any_pad: bool = False  # whether key_valid has any False in the filled part

    def reserve(self, n: int) -> None:
        """Make room for `n` filled slots: widen `k`/`v` to the next multiple of CACHE_BLOCK slots (at most
        `max_len`); the new slots hold zero keys/values and are invalid."""
        if n > self.max_len:
            raise ValueError(f"KV cache full: {n} > {self.max_len}")
        if n <= self.k.shape[3]:
            return
        cap = min(-(-n // CACHE_BLOCK) * CACHE_BLOCK, self.max_len)
        self.k, self.v = _widen(self.k, self.k_buf, cap, self.length), _widen(self.v, self.v_buf, cap, self.length)
        valid = self.key_valid.new_zeros(self.key_valid.shape[0], cap)
        valid[:, : self.length] = self.key_valid[:, : self.length]
        self.key_valid = valid

    def select_rows(self, index: torch.Tensor) -> KVCache:
        """A new cache whose row i is this cache's row `index[i]` (index [B'] long; rows may repeat): the sampler
        prefills each distinct prompt once and gives its n samples copies of its keys and values. Same
        `max_len`, `length` and capacity; fresh buffers, so the rows then grow apart."""
        L, _, Hkv, cap, Dh = self.k.shape
        Bn = index.shape[0]
        k_buf, v_buf = self.k_buf.new_empty(L * Bn * Hkv * self.max_len * Dh), self.v_buf.new_empty(
            L * Bn * Hkv * self.max_len * Dh)
        k, v = k_buf[: L * Bn * Hkv * cap * Dh].view(L, Bn, Hkv, cap, Dh), v_buf[: L * Bn * Hkv * cap * Dh].view(
            L, Bn, Hkv, cap, Dh)
        with torch.no_grad():  # a cache is never differentiated through
            torch.index_select(self.k, 1, index, out=k)
            torch.index_select(self.v, 1, index, out=v)
        return KVCache(k=k, v=v, k_buf=k_buf, v_buf=v_buf, key_valid=self.key_valid[index],
                       next_pos=self.next_pos[index], max_len=self.max_len, length=self.length, any_pad=self.any_pad)


    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only rows `index` ([B'] long, strictly increasing), in place: the sampler drops rows that have
        finished so that decoding steps run on the live rows only. Row i becomes old row `index[i]`; the rows move
        down inside the same buffers one layer at a time (a layer's destination lies below every later layer's
        rows), so the only extra memory is one layer's kept rows."""
        L, B, Hkv, cap, Dh = self.k.shape
        Bn = index.shape[0]
        with torch.no_grad():
            for buf in (self.k_buf, self.v_buf):
                rows = buf[: L * B * Hkv * cap * Dh].view(L * B, Hkv * cap * Dh)
                for layer in range(L):
                    rows[layer * Bn : (layer + 1) * Bn] = rows[layer * B + index]
        self.k = self.k_buf[: L * Bn * Hkv * cap * Dh].view(L, Bn, Hkv, cap, Dh)
        self.v = self.v_buf[: L * Bn * Hkv * cap * Dh].view(L, Bn, Hkv, cap, Dh)
        self.key_valid, self.next_pos = self.key_valid[index], self.next_pos[index]

def _widen(x: torch.Tensor, buf: torch.Tensor, cap: int, filled: int) -> torch.Tensor:
    """`x` [L, B, Hkv, S, Dh], a view of the start of `buf`, as the same rows with `cap` > S slots each: the
    first `filled` slots of every row are moved to its new place, the rest zeroed.

    Rows only move up, so they are moved top first, in groups whose old and new places do not overlap; the
    few low rows that would overlap even alone go last, through a copy."""
    L, B, Hkv, S, Dh = x.shape
    R = L * B * Hkv
    old, new = buf[: R * S * Dh].view(R, S, Dh), buf[: R * cap * Dh].view(R, cap, Dh)
    hi = R if filled else 1  # row 0 stays where it is
    while hi > 1:
        lo = max(1, -(-hi * S // cap))  # new places of rows >= lo start past the old ones of rows < hi
        if lo == hi:
            new[1:hi, :filled] = old[1:hi, :filled].clone()
            break
        new[lo:hi, :filled] = old[lo:hi, :filled]
        hi = lo
    new[:, filled:] = 0.0
    return new.view(L, B, Hkv, cap, Dh)
