#!/usr/bin/env bash
# Set up, then lint and run the whole test suite. A run that collects no test fails (pytest exit code 5).
set -uo pipefail
source "$(dirname "$0")/setup.sh" test
ruff check src tests benchmarks || exit 1
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit "$rc"
