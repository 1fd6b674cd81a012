"""`trainer.host_memory`: inside `reuse_freed_memory` a freed 16 MiB buffer's pages are reused (no new page
faults); outside it each one is fresh memory from the system; on exit the free heap is handed back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from credo.trainer.host_memory import release_free_heap, return_freed_memory, reuse_freed_memory

_PROBE = """
import resource, torch
from credo.trainer.host_memory import return_freed_memory, reuse_freed_memory
def faults(n):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(4 * 2**20).fill_(1.0)  # 16 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
return_freed_memory()
outside = faults(20)
with reuse_freed_memory() as acts:
    faults(20)  # the first few buffers grow the heap (small allocations pin the top between them)
    inside = faults(20)
    held = torch.empty(4 * 2**20).fill_(1.0); del held  # freed inside: kept in the heap, not trimmed
    rss_inside = rss()
rss_after = rss()
print(acts, outside, inside, rss_inside - rss_after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and malloc_trim are glibc's")
def test_buffers_freed_inside_the_block_are_reused_and_handed_back_after():
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}  # 4 KiB pages: every fresh 16 MiB buffer faults 4096 times
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    acts, outside, inside, released = out.stdout.split()
    outside, inside, released = int(outside), int(inside), int(released)
    assert acts == "True"
    assert outside >= 20 * 4096 * 0.9  # mmapped and unmapped each time
    assert inside < 4096  # warm: the same heap memory every time
    assert released >= 8 * 2**20  # malloc_trim gave the free heap back (most of the 16 MiB kept inside)


def test_off_glibc_or_on_it_the_calls_report_what_they_did():
    linux = sys.platform.startswith("linux")
    assert return_freed_memory() is linux
    with reuse_freed_memory() as acts:
        assert acts is linux
    assert isinstance(release_free_heap(), bool)
