#!/usr/bin/env bash
# Create .venv (once) and install credo with the CPU build of PyTorch pinned, so no CUDA wheels are pulled.
# Usage: source scripts/setup.sh [extras]   e.g. `source scripts/setup.sh test`
set -e
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
extras="${1:-}"
pip install -q torch==2.13.0 -e ".${extras:+[$extras]}"
set +e
