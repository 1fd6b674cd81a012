"""LoRA adapters on a Hugging Face causal LM through peft: what trains, what the KL reference is, what the
generation engines receive and what is saved.

    policy = apply_lora(policy, cfg.model.lora, seed)   # an HFPolicy → a LoraPolicy (rank 0: unchanged)

LoRA (Hu et al. 2021, arXiv 2106.09685) freezes each targeted linear weight W [out, in] and learns
B [out, r] (initialised to 0) and A [r, in]; the layer computes W x + (α/r)·B A x (peft's `LoraLayer`,
rank-stabilised scaling off). In credo:

- **Only the adapters train.** peft freezes every base parameter; the loop's optimizer holds the parameters that
  require a gradient, i.e. A and B only (AdamW state 2 × adapter size instead of 2 × model size).
- **The KL reference is the base model without a copy**: `LoraPolicy.reference()` runs the same modules with the
  adapters switched off (peft `disable_adapter`), in eval mode and without gradient. Because the base weights
  never change, that is exactly the model RL started from.
- **The engines sample the adapted model.** `LoraPolicy.engine_weights()` is the merged state dict under plain
  transformers names (`model.layers.0.self_attn.q_proj.weight`, no `base_layer`, no `lora_`): each adapted
  weight is W + (α/r)·B A computed in float32 from the master weights (peft's `get_delta_weight`), every other
  tensor the model's own. The native backend copies it into its engine at every `sync_weights` (all tensors or
  none, `models.hf.copy_into_native`); a backend that loads a plain transformers state dict (vLLM's
  `load_weights`) can take the same mapping. `engine_weights` raises when an adapted layer's weight cannot be
  placed, so an engine is never left sampling the base alone. Decoding without the native engine
  (`model.native_decode = false`) runs the peft model itself, adapters included.
- **Saving.** Checkpoints keep the adapter tensors only (peft's `get_peft_model_state_dict`; the base is
  `start_model/`), `save_adapter` writes peft's own format (`adapter_config.json` + `adapter_model.safetensors`,
  loadable with `PeftModel.from_pretrained(base, dir)`), and `save_pretrained` writes the merged model as a plain
  transformers directory (loadable with `AutoModelForCausalLM.from_pretrained`, no peft needed).

Precision: the base weights and the adapters are float32 masters like full fine-tuning's (`models.hf`); under a
bfloat16 compute dtype the trainer's forward runs W x and B A x as separate autocast matmuls while the engine
holds W + (α/r)·B A rounded once to bfloat16, a rounding difference of the same kind as the full model's
(π_old is recomputed by the trainer below float32, `trainer.update.low_precision`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from credo.models.hf import HFPolicy

ADAPTER = "default"  # peft's adapter name; credo trains one adapter
NOT_TARGETS = ("lm_head", "embed_tokens")  # tied to each other in small models: the engines' merge assumes neither


def lora_enabled(cfg: Any) -> bool:
    """Whether a `model.lora` config section asks for adapters (rank > 0)."""
    return cfg is not None and getattr(cfg, "rank", 0) > 0


def apply_lora(policy: Any, cfg: Any, seed: int = 0) -> Any:
    """`policy` with LoRA adapters: a `LoraPolicy` over `peft.get_peft_model(policy.model, LoraConfig(...))`, or
    `policy` itself when `cfg.rank` is 0.

    `cfg` carries `rank` (r ≥ 1), `alpha` (α > 0), `dropout` (on the adapter input, train mode only) and
    `target_modules` (module-name suffixes, e.g. "q_proj"; ["all-linear"] = every linear layer but the output
    head). A's random initialisation draws from a generator seeded with `seed` (the global torch stream is
    left untouched), so a run and its resume build the same adapters. Raises ValueError for a policy that is not
    a text Hugging Face `HFPolicy` (TinyLM, VLMs), a bad rank / alpha / dropout or a target among `NOT_TARGETS`;
    ImportError naming the extra when peft is missing."""
    if not lora_enabled(cfg):
        return policy
    if type(policy) is not HFPolicy:
        raise ValueError(f"model.lora: LoRA needs a Hugging Face text causal LM (model.path), not "
                         f"{type(policy).__name__}")
    if cfg.alpha <= 0 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"model.lora: alpha must be > 0 and dropout in [0, 1); got {cfg.alpha}, {cfg.dropout}")
    targets = list(cfg.target_modules)
    if not targets or any(t in NOT_TARGETS for t in targets):
        raise ValueError(f"model.lora.target_modules {targets}: name linear layers inside the decoder blocks "
                         f"(not {', '.join(NOT_TARGETS)})")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError(f"model.lora needs peft: pip install 'credo[lora]' ({e})") from e
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                        target_modules="all-linear" if targets == ["all-linear"] else targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(policy.model, config)
    return LoraPolicy(model, native=policy.native_decode, compute_dtype=policy.compute_dtype)


def lora_layers(model: Any) -> dict[str, Any]:
    """The peft LoRA layers of a peft model, by module name in the base model (`model.layers.0.self_attn.q_proj`)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_weights(model: Any, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The merged state dict of a peft LoRA model under plain transformers parameter names: W + (α/r)·B A
    (float32, new tensors) for every adapted layer's weight, the model's own tensors (not copies) for every other
    parameter; tied parameters appear once, as in `named_parameters()`. The model is not modified (no peft
    `merge`). Raises RuntimeError when an adapted layer's weight has no plain name to go to."""
    base = model.get_base_model()
    out: dict[str, torch.Tensor] = {}
    for name, p in base.named_parameters():
        if any(part.startswith("lora_") for part in name.split(".")):
            continue  # adapter tensors live inside the merged weights
        out[name.replace(".base_layer.", ".")] = p
    for name, layer in lora_layers(model).items():
        key = f"{name}.weight"
        if key not in out:
            raise RuntimeError(f"LoRA merge: adapted layer {name} has no weight {key} to merge into")
        out[key] = layer.get_base_layer().weight.float() + layer.get_delta_weight(adapter).float()
    return out


class LoraPolicy(HFPolicy):
    """An `HFPolicy` whose `model` is a peft LoRA model (module docstring): trains the adapters, gives the engines
    merged weights (`engine_weights`), the KL reference as the adapters switched off (`reference`), and saves the
    adapters in peft's format (`save_adapter`) and the merged model as plain transformers (`save_pretrained`)."""

    def engine_weights(self) -> dict[str, torch.Tensor]:
        """The weights a generation engine loads: `merged_weights` of the model, plain names, float32."""
        return merged_weights(self.model)

    def reference(self) -> AdaptersOff:
        """The KL reference policy: this policy's base model (adapters disabled), sharing its memory."""
        return AdaptersOff(self)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter tensors only (peft's `get_peft_model_state_dict`: `...q_proj.lora_A.weight` [r, in],
        `...lora_B.weight` [out, r]), copied to the CPU: what a checkpoint keeps of the model."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load `adapter_state_dict()` output into the adapters (peft's `set_peft_model_state_dict`). Raises
        RuntimeError when an adapter tensor is missing or unexpected (the adapters would not be the saved ones)."""
        from peft import set_peft_model_state_dict

        expected = set(self.adapter_state_dict())
        if set(state) != expected:
            raise RuntimeError(f"LoRA checkpoint does not match the adapters: missing {sorted(expected - set(state))},"
                               f" unexpected {sorted(set(state) - expected)}")
        result = set_peft_model_state_dict(self.model, state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"LoRA checkpoint: peft did not load {result.unexpected_keys}")

    def save_adapter(self, path: str | Path) -> None:
        """Write the adapters in peft's format into `path` (a directory, replaced atomically: written beside it,
        then renamed)."""
        _atomic_dir(path, lambda tmp: self.model.save_pretrained(tmp, safe_serialization=True))

    def save_pretrained(self, path: str | Path) -> None:
        """Write the merged model (W + (α/r)·B A) as a plain transformers directory (config + safetensors)."""
        weights = {k: v.detach().contiguous() for k, v in self.engine_weights().items()}
        self.model.get_base_model().save_pretrained(path, state_dict=weights, safe_serialization=True)


class AdaptersOff:
    """A `Policy` view of a `LoraPolicy`'s base model: every call runs with the adapters disabled (peft
    `disable_adapter`), the model in eval mode and no gradient; its train mode is restored after. The trainer
    uses it as the KL reference (`trainer.update`)."""

    def __init__(self, policy: LoraPolicy) -> None:
        self.policy = policy
        self.chunkable = policy.chunkable
        self.compute_dtype = policy.compute_dtype

    @contextlib.contextmanager
    def _off(self) -> Iterator[None]:
        model = self.policy.model
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                yield
        finally:
            model.train(was)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.policy.parameters()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of the base model."""
        with self._off():
            return self.policy.forward(input_ids, attention_mask)

    __call__ = forward

    def hidden_states(self, input_ids: torch.Tensor, images: list | None = None) -> torch.Tensor:
        """The base model's last hidden states [B, T, D]."""
        with self._off():
            return self.policy.hidden_states(input_ids, images)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The base model's LM head on hidden states [..., D] → logits [..., V]."""
        with self._off():
            return self.policy.output_logits(hidden)


def _atomic_dir(path: str | Path, write: Any) -> None:
    """Call `write(tmp)` on a fresh `<path>.tmp` directory, then put it in place of `path`."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["AdaptersOff", "LoraPolicy", "apply_lora", "lora_enabled", "lora_layers", "merged_weights"]
