"""Hugging Face causal LMs as credo policies: `HFPolicy` (model) and `HFTokenizer` (tokenizer + chat template,
`models.hf_tokenizer`).

Any `transformers` causal LM saved in a local directory loads with `load_hf(path)`; nothing is downloaded.
The native generation backend (`rollout.native.NativeGenerator`) decodes it step by step, never through
`generate`:

- Llama-family models (llama, qwen2, mistral with default RoPE) decode on a native engine: a `TinyLM` with
  grouped-query attention and SwiGLU (`build_native_engine`) whose weights are copied from the Hugging Face model
  by `copy_into_native`, at construction and at every `sync_weights` the loop calls after an update stage. This
  is the inference-engine split of verl/OpenRLHF (trainer weights → rollout engine) inside one process.
- Any other architecture decodes through the model's own forward and `DynamicCache` (`HFPolicy.new_cache` /
  `step`, the `models.policy.Decoder` protocol).

Either way the trainer recomputes log-probs with the Hugging Face model; tests hold the sampler's
log-probs to the trainer's within 1e-4 for both paths. The trainer runs the decoder body (`hidden_states`)
and applies the LM head a few positions at a time (`output_logits`, see `trainer.logprobs`), so the
`[B, T, V]` logits are never held at once.

Precision: the parameters are always float32 (the optimizer's master weights); `model.dtype` = bfloat16 /
float16 names the compute dtype: the trainer's forward runs under `torch.autocast` (each matmul reads its
weight rounded to the compute dtype) and the native decoding engine holds its copy of the weights in it.
Loading bfloat16 parameters and updating them in bfloat16 would round a 1e-6 AdamW step away.

Left padding: the sampler left-pads prompts into one block. `step` keeps the running attention mask and
derives each row's position ids from it (`cumsum(mask) - 1`), so a padded row is scored exactly like the
unpadded one; the trainer's right-padded `forward` uses the default positions 0..T-1, the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from credo.data import InputError
from credo.models.fused import fuse_decoder_layers, recompute_contexts
from credo.models.hf_tokenizer import HFTokenizer
from credo.models.prefix_attention import ATTENTION, flatten, use_prefix_attention
from credo.models.tiny import TinyConfig, TinyLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class HFCache:
    """The model's own cache object plus the attention mask of every position seen so far."""

    past: Any  # transformers Cache (DynamicCache)
    mask: torch.Tensor  # [B, S] bool: real (non-pad) positions so far


def native_config(config: Any) -> TinyConfig | None:
    """The TinyLM configuration equivalent to a Hugging Face config, or None when the architecture has a
    feature the native engine does not implement (then decoding goes through the model's own forward)."""
    if config.model_type not in ("llama", "qwen2", "mistral"):
        return None
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    unsupported = (
        rope.get("rope_type", rope.get("type", "default")) != "default"
        or any(t != "full_attention" for t in getattr(config, "layer_types", None) or [])
        or head_dim * config.num_attention_heads != config.hidden_size
        or getattr(config, "hidden_act", "silu") != "silu"
        or getattr(config, "mlp_bias", False)
        or (config.model_type == "llama" and getattr(config, "attention_bias", False))  # also an o_proj bias
        or getattr(config, "use_sliding_window", False)
        or (config.model_type == "mistral" and getattr(config, "sliding_window", None))
    )
    if unsupported:
        return None
    return TinyConfig(
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        d_ff=config.intermediate_size,
        max_len=config.max_position_embeddings,
        rope_base=float(theta),
        norm_eps=config.rms_norm_eps,
        mlp="swiglu",
        qkv_bias=config.model_type == "qwen2",
        tie_embeddings=bool(config.tie_word_embeddings),
    )


@torch.no_grad()
def plain_lm_head(model: Any) -> bool:
    """Whether the model's logits are its output embedding applied to its decoder's hidden states, nothing more:
    a text model (no vision tower) whose `forward` on two tokens equals the head on `get_decoder()`'s output.
    False for heads that rescale or soft-cap (Gemma 2, Cohere, Granite) and for anything that fails the check;
    the trainer then takes the full logits from `forward`."""
    if getattr(model.config, "vision_config", None) is not None or model.get_output_embeddings() is None:
        return False
    training = model.training
    model.eval()  # no dropout in the comparison
    try:
        ids = torch.tensor([[0, 1]], device=next(model.parameters()).device)
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        split = model.get_output_embeddings()(hidden).float()
    except Exception:  # an architecture without a plain decoder: fall back to full logits
        return False
    finally:
        model.train(training)
    return full.shape == split.shape and bool(torch.allclose(full, split, rtol=1e-4, atol=1e-4))


def native_weight_map(engine: TinyLM) -> list[tuple[str, list[str]]]:
    """(engine parameter, Hugging Face parameters concatenated into it) for a Llama-family model: q/k/v fuse into
    `qkv`, gate/up into `up`; the output head is the input embedding when the model ties them."""
    pairs = [("embed.weight", ["model.embed_tokens.weight"]), ("ln_f.weight", ["model.norm.weight"])]
    if engine.head is not None:
        pairs.append(("head.weight", ["lm_head.weight"]))
    for i, blk in enumerate(engine.blocks):
        h, e = f"model.layers.{i}.", f"blocks.{i}."
        pairs += [
            (e + "ln1.weight", [h + "input_layernorm.weight"]),
            (e + "ln2.weight", [h + "post_attention_layernorm.weight"]),
            (e + "qkv.weight", [h + f"self_attn.{x}_proj.weight" for x in "qkv"]),
            (e + "proj.weight", [h + "self_attn.o_proj.weight"]),
            (e + "up.weight", [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"]),
            (e + "down.weight", [h + "mlp.down_proj.weight"]),
        ]
        if blk.qkv.bias is not None:
            pairs.append((e + "qkv.bias", [h + f"self_attn.{x}_proj.bias" for x in "qkv"]))
    return pairs


@torch.no_grad()
def copy_into_native(weights: Mapping[str, torch.Tensor] | Any, engine: TinyLM) -> None:
    """Copy a Llama-family Hugging Face model's weights into `engine` (fusing q/k/v and gate/up), cast to the
    engine's dtype. `weights`: a state dict under the model's parameter names (`HFPolicy.engine_weights`, e.g. a
    LoRA policy's merged weights) or the model itself (its `named_parameters()`). All or nothing: every engine
    parameter must receive a tensor and every model parameter must be read (`native_weight_map`), with matching
    shapes, or RuntimeError is raised before anything is written."""
    # tied weights appear once, under their first name
    src = dict(weights) if isinstance(weights, Mapping) else dict(weights.named_parameters())
    dst = dict(engine.named_parameters())
    plan = native_weight_map(engine)
    missing = [n for _, names in plan for n in names if n not in src]
    unread = sorted(set(src) - {n for _, names in plan for n in names})
    unwritten = sorted(set(dst) - {d for d, _ in plan})
    if missing or unread or unwritten:
        raise RuntimeError(f"native engine weight sync incomplete: model tensors missing {missing}, model tensors "
                           f"not copied {unread}, engine tensors not written {unwritten}")
    tensors = [(dst[d], [src[n] for n in names]) for d, names in plan]
    bad = [d for (d, _), (t, parts) in zip(plan, tensors, strict=True)
           if t.shape[0] != sum(p.shape[0] for p in parts) or any(p.shape[1:] != t.shape[1:] for p in parts)]
    if bad:
        raise RuntimeError(f"native engine weight sync: shapes differ for {bad}")
    for t, parts in tensors:  # FSDP-sharded (DTensor) parameters are gathered one at a time (trainer.distributed)
        parts = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in parts]
        t.copy_(parts[0] if len(parts) == 1 else torch.cat(parts))


def build_native_engine(policy: HFPolicy) -> TinyLM | None:
    """A native decoding engine (`TinyLM`) holding `policy`'s weights in its compute dtype, on its device; None when
    the architecture has a feature the engine lacks (`native_config`)."""
    cfg = native_config(policy.model.config)
    if cfg is None:
        return None
    engine = TinyLM(cfg).to(device=policy.device, dtype=policy.compute_dtype).eval().requires_grad_(False)
    copy_into_native(policy.engine_weights(), engine)
    return engine


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """The keyword that passes a KV cache to `module.forward`: `cache` from transformers 5.2x on (where
    `past_key_values` is deprecated), `past_key_values` before. A peft model forwards its keywords to the model
    it wraps, whose signature decides."""
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    return {_cache_kwarg(type(module)): cache}


@functools.cache
def _cache_kwarg(cls: type) -> str:
    """`cache_kwargs`' keyword for a module class, read once per class (the signature does not change)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (`cache`, or `past_key_values` before transformers 5.2x)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


class HFPolicy(torch.nn.Module):
    """A `transformers` causal LM behind the `Policy` protocol, and the `Decoder` of architectures the native
    engine does not cover (see the module docstring). `native_decode` tells the native backend whether to decode
    on a `build_native_engine` copy (the `model.native_decode` option)."""

    def __init__(self, model: Any, native: bool = True, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        p = next(model.parameters())
        self.compute_dtype = compute_dtype or p.dtype  # autocast dtype of the forward (the parameters' if none)
        self.chunkable = plain_lm_head(model)  # `output_logits(hidden_states(x))` equals `forward(x)`
        self.native_decode = native  # decode on a native engine copy when the architecture allows it
        use_prefix_attention(model)  # sdpa + packed rows' prefix attention (`models.prefix_attention`)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def engine_weights(self) -> dict[str, torch.Tensor]:
        """The weights a generation engine loads after an update, under the model's own parameter names (tied
        weights once): the parameters themselves here; a LoRA policy's merged weights (`models.lora`)."""
        return dict(self.model.named_parameters())

    def autocast(self) -> Any:
        """`torch.autocast` to the compute dtype, or a no-op context when the compute dtype is the parameters'."""
        if self.compute_dtype == next(self.model.parameters()).dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of right-padded sequences, in the compute dtype."""
        with self.autocast():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def hidden_states(self, input_ids: torch.Tensor, images: list | None = None) -> torch.Tensor:
        """The decoder body's last hidden states [B, T, D] of right-padded sequences (after the final norm)."""
        if images is not None and any(images):
            raise ValueError("this model takes no image input")
        with self.autocast():
            return self.model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state

    @property
    def shares_prefix(self) -> bool:
        """Whether `prefix_hidden_states` can run: with the sdpa or eager attention (the ones the test holds to
        the plain forward), and not under activation checkpointing, which turns the KV cache off in training
        mode (transformers sets `use_cache=False` there)."""
        if getattr(self.model.config, "_attn_implementation", "sdpa") not in ("sdpa", ATTENTION, "eager"):
            return False
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # peft: base
        flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") \
            else "is_gradient_checkpointing"  # transformers >= 5.x renamed it (the old name warns)
        return not (self.model.training and getattr(model, flag, False))

    def prefix_hidden_states(self, prefix_ids: torch.Tensor, prefix_lens: torch.Tensor, owner: torch.Tensor,
                             suffix_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of rows that share prompts, each prompt run once: `prefix_ids` [P, Lp] (right-padded
        prompts, `prefix_lens` [P] real tokens each), `owner` [B] (row → its prompt), `suffix_ids` [B, Ls] (each
        row's tokens after its prompt, right-padded). The prompts' keys and values (a `DynamicCache`, kept in the
        autograd graph) are gathered to the rows (`batch_select_indices`), and the suffixes run on them with the
        prompt padding masked and positions `prefix_lens[owner] + 0..Ls-1`. Returns (prefix states [P, Lp, D],
        suffix states [B, Ls, D]); row b's states equal `hidden_states` of its whole sequence, split at its
        prompt length (the gradient of a prompt sums over its rows). Shared-prefix forward as in Prefix Grouper
        (Liu et al. 2025, arXiv 2506.05433), through transformers' cache."""
        decoder = self.model.get_decoder()
        Lp, Ls = prefix_ids.shape[1], suffix_ids.shape[1]
        pmask = torch.arange(Lp, device=prefix_ids.device)[None, :] < prefix_lens[:, None]  # [P, Lp]
        with self.autocast():
            pre = decoder(input_ids=prefix_ids, attention_mask=pmask.long(), use_cache=True)
            cache = output_cache(pre)
            cache.batch_select_indices(owner)
            mask = torch.cat([pmask[owner], pmask.new_ones(len(owner), Ls)], dim=1).long()  # [B, Lp + Ls]
            positions = prefix_lens[owner][:, None] + torch.arange(Ls, device=suffix_ids.device)[None, :]
            suf = decoder(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **cache_kwargs(decoder, cache))
        return pre.last_hidden_state, suf.last_hidden_state

    @property
    def packs_prefix(self) -> bool:
        """Whether `packed_hidden_states` can run: the sdpa or eager attention (those take a custom 4D mask as
        given), also under activation checkpointing (one plain decoder forward); not with sliding-window layers,
        whose window the block mask would replace."""
        c = self.model.config
        sliding = (getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True)) \
            or "sliding_attention" in (getattr(c, "layer_types", None) or ())
        return getattr(c, "_attn_implementation", "sdpa") in ("sdpa", ATTENTION, "eager") and not sliding

    def packed_hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                             segments: torch.Tensor) -> torch.Tensor:
        """Hidden states [n, S, D] of packed rows: `input_ids`, `position_ids`, `segments` [n, S]. A packed row is
        one prompt (segment 0) followed by several continuations of it (segments 1, 2, …; −1: padding); token j
        attends to token k ≤ j of its row when k is in the prompt or in j's own segment, and `position_ids`
        restart after the prompt for each continuation, so each continuation's states equal those of prompt +
        continuation run alone. Layout as in Prefix Grouper (Liu et al. 2025, arXiv 2506.05433); one decoder
        forward, so activation checkpointing and FSDP2 see an ordinary forward. With the sdpa attention (switched
        to `models.prefix_attention.ATTENTION` at construction) the rows' real tokens run as one row and each prompt and
        continuation attends only to its own keys (`models.prefix_attention`; padding states are 0); with eager the
        block mask is given to the attention as an additive 4D mask over the padded rows."""
        decoder = self.model.get_decoder()
        if getattr(self.model.config, "_attn_implementation", None) == ATTENTION:
            keep, layout = flatten(segments)  # [n, S]
            ids = input_ids[keep][None]  # [1, N]
            with self.autocast():
                h = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids[keep][None],
                            use_cache=False, credo_prefix_layout=layout).last_hidden_state[0]  # [N, D]
            flat = keep.reshape(-1).nonzero().squeeze(1)  # [N]
            out = h.new_zeros(keep.numel(), h.shape[-1]).index_copy(0, flat, h)
            return out.view(*keep.shape, h.shape[-1])
        S = input_ids.shape[1]
        q, k = segments[:, :, None], segments[:, None, :]  # [n, S, 1], [n, 1, S]
        causal = torch.ones(S, S, dtype=torch.bool, device=input_ids.device).tril()
        allowed = (causal & ((k == 0) | (k == q)))[:, None]  # [n, 1, S, S]; padding sees earlier padding
        mask = torch.zeros(allowed.shape, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(torch.float32).min)
        with self.autocast():
            out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def lm_head(self) -> tuple[torch.Tensor, torch.dtype] | None:
        """The LM head's weight [V, D] and the compute dtype when `output_logits(h)` is h Wᵀ in that dtype (a
        bias-free `nn.Linear` holding a plain tensor), so that `trainer.logprobs` may run the head's backward
        itself; None for other heads, a peft-adapted one, or under FSDP2 (a sharded weight is gathered only
        inside the module's forward)."""
        from torch.distributed.tensor import DTensor

        head = self.model.get_output_embeddings()
        if type(head) is not torch.nn.Linear or head.bias is not None or isinstance(head.weight, DTensor):
            return None
        return head.weight, self.compute_dtype

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states [..., D] → logits [..., V] (valid when `chunkable`)."""
        with self.autocast():
            return self.model.get_output_embeddings()(hidden)

    def new_cache(self, batch_size: int, max_len: int) -> HFCache:
        """An empty `DynamicCache` (it grows as `step` fills it; `max_len` is not needed)."""
        from transformers import DynamicCache

        return HFCache(
            past=DynamicCache(config=self.model.config),
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device),
        )

    def step(
        self, input_ids: torch.Tensor, cache: HFCache, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Append `input_ids` [B, t] and return the logits of the LAST position only, [B, 1, V], computed in the
        compute dtype as the trainer's forward is.

        Only the last position is computed: a prompt block over a real model's vocabulary (B × P × 150k
        floats) would otherwise dominate memory. The sampler reads only `[:, -1]`.
        """
        B, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, t, dtype=torch.bool, device=input_ids.device)
        cache.mask = torch.cat([cache.mask, attention_mask.bool()], dim=1)
        positions = (cache.mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        with self.autocast():
            out = self.model(
                input_ids=input_ids,
                attention_mask=cache.mask.long(),
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(self.model, cache.past),
            )
        cache.past = output_cache(out)
        return out.logits

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path, safe_serialization=True)


def is_hf_dir(path: str | Path) -> bool:
    """True for a directory holding a transformers config that is not a credo TinyLM."""
    import json

    cfg = Path(path) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") not in (None, "tinylm")


def load_hf(
    path: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    gradient_checkpointing: bool = True,
    chat: bool = True,
    native: bool = True,
    fused: bool = True,
) -> tuple[HFPolicy, HFTokenizer]:
    """Load model and tokenizer from a local directory (`local_files_only`: never a hub download).

    The parameters load in float32 whatever `dtype` says; `dtype` is the compute dtype (module docstring).
    Gradient (activation) checkpointing recomputes each decoder layer in the backward pass (train mode only).
    `fused`: Llama/Qwen2/Mistral layers run `models.fused`'s paths (the same numbers, fewer memory passes; the
    MLP's last product not recomputed under checkpointing). Raises ValueError for an unknown dtype, OSError for a
    directory without a loadable model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:  # saving shards reports through huggingface_hub's own bars
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    if dtype not in DTYPES:
        raise InputError(f"model.dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).to(device)
    if gradient_checkpointing:  # transformers >= 5.x names it activation checkpointing
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable({"use_reentrant": False, "context_fn": recompute_contexts})  # fused's MLP sees the recomputation
        model.config.use_cache = False  # the sampler passes use_cache=True explicitly
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    extra: list[int] = []
    try:
        gen = GenerationConfig.from_pretrained(path, local_files_only=True)
        eos = gen.eos_token_id
        extra = [eos] if isinstance(eos, int) else list(eos or [])
    except OSError:  # no generation_config.json
        pass
    if fused:
        fuse_decoder_layers(model)
    policy = HFPolicy(model, native=native, compute_dtype=DTYPES[dtype])
    return policy, HFTokenizer(tokenizer, chat=chat, extra_eos=extra)
