#!/usr/bin/env bash
# Set up, then run `credo train` (default: the arith sandbox, SFT warm start + GRPO) with any arguments given.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
credo train "$@"
