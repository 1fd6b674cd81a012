"""Where a CPU step's large buffers come from: glibc's heap or fresh pages of the system (Linux; no-ops elsewhere).

PyTorch's CPU allocator hands every tensor to `malloc` and every freed one back to `free`; there is no caching
allocator on CPUs. glibc then decides, per request, between its heap (freed memory kept and reused) and a fresh
`mmap` (returned to the system on `free`, so the next buffer of that size is paid again in page faults and the
kernel's zeroing of each page). Two settings, measured on SmolLM2-135M's RL step (`benchmarks/real_model.py`,
8 × 8 rows, ~3.7k packed tokens, gradient checkpointing, 2 cores):

- Outside the update's forward and backward, every buffer above 128 KiB is mmapped (`return_freed_memory`): with
  glibc's default the threshold rises to 32 MiB after the first free, and long-lived tensors (AdamW's state, made
  at the first step; gradients) land in the heap between transient ones and pin it, fragmented: SmolLM2-135M, 64
  rows × 109 tokens, peak RSS 5.8 GB against 2.9 GB with the fixed threshold.
- Inside one minibatch's forward and backward (`reuse_freed_memory`; the trainer also decodes its rollouts so),
  the heap takes buffers up to 32 MiB and is never trimmed, so each layer's activations reuse the memory the
  previous layer freed; on leaving, the thresholds are restored and the heap's free pages handed back
  (`malloc_trim`). Per update: 0.05-0.07 M minor page faults and 2.8-3.7 s of kernel CPU time, against 1.0-1.1 M
  and 10-13 s with every large activation fresh (session 21; `getrusage` around `policy_update`). Wall time, in
  separate runs on this drifting machine: 41.6-44.9 s per update (with the native engine asleep, `rollout.native`)
  against 44.7-51.4 s; peak RSS 3.42-3.59 GiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
SMALL = 128 * 1024  # glibc's initial mmap and trim thresholds
HEAP_MAX = 32 * 1024 * 1024  # the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None off Linux or where it cannot be loaded (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def return_freed_memory(threshold: int = SMALL) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes (its initial value) so that every larger buffer is mmapped
    and given back to the system when freed, instead of the threshold growing to 32 MiB and large tensors
    fragmenting the heap (mallopt M_MMAP_THRESHOLD; the same as MALLOC_MMAP_THRESHOLD_ in the environment).
    Process-wide, once; returns whether it was applied (False off glibc)."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, buffers up to 32 MiB come from glibc's heap, which is never trimmed, so memory freed in
    the block is reused without new page faults; on exit the thresholds return to `return_freed_memory`'s (128 KiB
    mmap, 128 KiB trim) and the heap's free pages are handed back to the system (`malloc_trim(0)`). Meant for
    transient work whose buffers mostly die inside it (a forward and backward pass); what outlives the block and
    sits in the heap keeps its pages until freed. Yields whether it acts (False off glibc). Not thread-safe with
    respect to other threads changing the same settings (mallopt is process-wide)."""
    libc = _libc()
    if libc is None:
        yield False
        return
    return_freed_memory()  # the process-wide setting that exit restores (128 KiB)
    libc.mallopt(M_MMAP_THRESHOLD, HEAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, -1)  # (size_t) -1: never trim
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, SMALL)
        libc.mallopt(M_TRIM_THRESHOLD, SMALL)
        release_free_heap()


def release_free_heap() -> bool:
    """Hand the free pages of glibc's heap back to the system (`malloc_trim(0)`); returns whether any were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


__all__ = ["release_free_heap", "return_freed_memory", "reuse_freed_memory"]
