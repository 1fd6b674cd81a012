"""`rollout.backend = "vllm"` without vLLM installed: one line naming the install command; `import credo` never
imports vLLM; `rollout.backend = "auto"` is a fixed rule (`rollout.backend.resolve_backend`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from credo.models import build_policy
from credo.rollout.backend import make_generator, resolve_backend
from credo.trainer.config import ModelConfig


def _tiny():
    return build_policy(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=32))


def test_import_credo_never_imports_vllm():
    code = ("import sys, credo, credo.rollout.backend, credo.trainer.loop; "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_is_one_line_naming_the_install():
    policy, tok = _tiny()
    with pytest.raises(ImportError) as info:
        make_generator("vllm", policy, tok)
    msg = str(info.value)
    assert "\n" not in msg and "setup_vllm_cpu.sh" in msg and ".[vllm]" in msg


def test_auto_is_native_for_a_tiny_model_and_on_cpu(tmp_path):
    policy, tok = _tiny()
    assert resolve_backend("auto", policy) == "native"  # not a Hugging Face model
    assert resolve_backend("native", policy) == "native" and resolve_backend("vllm", policy) == "vllm"
    pytest.importorskip("transformers")
    from credo.models.hf import load_hf
    from credo.models.tiny_hf import make_tiny_hf

    d = make_tiny_hf(tmp_path, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    hf_policy, hf_tok = load_hf(d)
    assert resolve_backend("auto", hf_policy) == "native"  # on CPU, whatever is installed
    assert type(make_generator("auto", hf_policy, hf_tok)).__name__ == "NativeGenerator"


def test_rollout_sleep_needs_the_vllm_backend(tmp_path):
    """`rollout.sleep` is vLLM's sleep mode: with the native backend the run stops at once (before any model
    loads), with one line saying what it needs."""
    from credo.trainer.config import load_config
    from credo.trainer.loop import train

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "rollout.sleep=true"])
    with pytest.raises(ValueError, match="rollout.sleep is vLLM's sleep mode") as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())  # stopped before the run wrote anything
