"""The GPU benchmark scripts run on the CPU with their tiny shape, so CI keeps them alive (their GPU figures are
printed for the record when a GPU is at hand): each must finish and print its last line of key=value results."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, keys", [
    ("hf_gpu.py", ("_step_s=", "_mfu=")),
    ("fsdp_gpu.py", ("fsdp_", "_step_s=", "_peak_gb=", "_mfu=")),
])
def test_gpu_benchmark_runs_tiny_on_cpu(script: str, keys: tuple[str, ...]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(BENCH / script), "--tiny", "--steps", "2"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    for k in keys:
        assert k in last, (k, last)
    values = [float(kv.split("=", 1)[1]) for kv in last.split()]
    assert all(v == v for v in values), last  # no NaN
