"""Policies (`Policy` protocol) and tokenizers; `build_policy` / `load_policy` pick one from config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from credo.models import hub
from credo.models.policy import Policy
from credo.models.tiny import TinyConfig, TinyLM
from credo.models.tokenizer import CharTokenizer


def build_policy(cfg: Any) -> tuple[TinyLM, CharTokenizer]:
    """A freshly initialised TinyLM (or TinyVLM, `model.kind = "tinyvlm"`) and its char tokenizer."""
    shape = dict(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff, max_len=cfg.max_len)
    if getattr(cfg, "kind", "tinylm") == "tinyvlm":
        from credo.models.vlm import TinyVLM, VLMConfig, VLMTokenizer

        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        vtok = VLMTokenizer(n_patches=n_patches)
        vcfg = VLMConfig(vocab_size=vtok.vocab_size, image_size=cfg.image_size, patch_size=cfg.patch_size,
                         image_token_id=vtok.image_token_id, **shape)
        return TinyVLM(vcfg), vtok
    tok = CharTokenizer()
    return TinyLM(TinyConfig(vocab_size=tok.vocab_size, **shape)), tok


def load_policy(path: str | Path, cfg: Any = None) -> tuple[Any, Any]:
    """Load a saved model directory: a credo TinyLM / TinyVLM (config.json + model.safetensors + tokenizer.json),
    a Hugging Face Qwen2-VL / Qwen2.5-VL (`credo.models.hf_vlm`) or any other Hugging Face causal LM, with the
    dtype / device / gradient-checkpointing / chat-template (/ image-size) options of a `ModelConfig` when one is
    given. A known model name (`models.hub.MODELS`, e.g. "smollm2-135m-instruct") loads its converted cache."""
    d = hub.resolve(path)
    if not (d / "config.json").is_file():
        known = ", ".join(hub.MODELS)
        raise FileNotFoundError(f"{d}: not a model directory (no config.json), nor a known model name ({known}; "
                                "`credo models list`)")
    kind = json.loads((d / "config.json").read_text()).get("model_type")
    if kind == "tinylm":
        return TinyLM.from_pretrained(d), CharTokenizer.load(d)
    if kind == "tinyvlm":
        from credo.models.vlm import TinyVLM, VLMTokenizer

        return TinyVLM.from_pretrained(d), VLMTokenizer.load(d)
    if kind in ("qwen2_vl", "qwen2_5_vl"):  # Hugging Face vision-language models (credo.models.hf_vlm)
        from credo.models.hf_vlm import load_hf_vlm

        if cfg is None:
            return load_hf_vlm(d)
        return load_hf_vlm(d, dtype=cfg.dtype, device=cfg.device, gradient_checkpointing=cfg.gradient_checkpointing,
                           chat=cfg.chat_template, image_size=cfg.image_size)
    from credo.models.hf import load_hf

    if cfg is None:
        return load_hf(d)
    return load_hf(d, dtype=cfg.dtype, device=cfg.device, gradient_checkpointing=cfg.gradient_checkpointing,
                   chat=cfg.chat_template, native=cfg.native_decode, fused=cfg.fused_layers)


def save_policy(model: Any, tokenizer: Any, path: str | Path) -> None:
    """Write the model directory atomically: into `<path>.tmp`, then renamed over `path`."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["CharTokenizer", "Policy", "TinyConfig", "TinyLM", "build_policy", "load_policy", "save_policy"]
