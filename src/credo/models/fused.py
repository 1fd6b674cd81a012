"""Fewer passes over memory in the update of a Llama-family model (Llama, Qwen2, Mistral): the same numbers.

On a CPU the update of a small model is bound by its matmuls and, after them, by the elementwise passes of the
decoder layers, each of which reads and writes a full [tokens, width] buffer; under activation checkpointing every
layer's forward also runs twice. Measured on SmolLM2-135M (one update of `benchmarks/real_model.py`'s workload,
~3.9k tokens, 2 cores), a forward pass spent 7.3 s in matmuls and ~3.2 s in RMSNorm, rotary embedding, the prefix
attention's gathers and the MLP's product. `fuse_decoder_layers` swaps, per module instance (the classes, the
parameters and their names stay as they are, so peft, FSDP2 and checkpoints see the same model):

- each RMSNorm's forward for `rms_norm`: one reduction and two passes forward, its own backward (transformers'
  form: four allocated passes forward and autograd's chain of eight backward);
- each attention's forward, when the call carries a `PrefixLayout` (packed rows, `models.prefix_attention`), for
  one that keeps queries, keys and values token-major ([N, heads, d], as the projections write them), rotates
  them with `rotary` (four half-width passes, the backward a rotation by −θ; transformers' `rotate_half` form
  allocates five full ones) and gathers whole token rows into the attention's blocks. Any other call (a KV cache,
  generation, the eager attention) runs transformers' own forward;
- each MLP's last projection (`down_proj`), so that under activation checkpointing its recomputation keeps the
  input it saves but skips its product: nothing reads the recomputed output (the decoder layer adds it to the
  residual, and the add saves nothing), and the product is a quarter of the layer's matmul FLOPs
  (`recompute_contexts`, given to `torch.utils.checkpoint` as its `context_fn`).

Each swap is taken only where the fused path computes what transformers' does: float32 activations without
autocast for the norms and the attention (bf16 compute runs transformers' forwards there; the last projection
follows autocast as transformers' call does), the rotary embedding's cos/sin halves equal (`rotate_half`'s
convention), a bias-free `nn.Linear` holding a plain tensor (the last projection; not a peft-wrapped or
FSDP2-sharded one). Anything else falls back to the original forward at call time. `model.fused_layers = false`
(`load_hf(fused=False)`) keeps transformers' forwards throughout.

Measured: one update of the workload above, both models in one process, taken in turn four times (machine speed
drifts): transformers' forwards 49.6 / 51.0 / 56.5 / 59.1 s, fused 47.2 / 44.9 / 52.1 / 50.7 s (1.05–1.17×).
Tests: tests/test_fused.py (outputs and gradients against transformers' modules within float32 rounding; the
recomputation seen to skip the product).
"""

from __future__ import annotations

import contextlib
import threading
import types
from typing import Any

import torch
import torch.nn.functional as F

NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
ATTENTIONS = ("LlamaAttention", "Qwen2Attention", "MistralAttention")
LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer")  # norm → attn → add → norm → MLP → add

_state = threading.local()


def recomputing() -> bool:
    """Whether this thread is inside activation checkpointing's recomputation (`recompute_contexts`)."""
    return getattr(_state, "recomputing", False)


@contextlib.contextmanager
def _recompute_context() -> Any:
    before = getattr(_state, "recomputing", False)
    _state.recomputing = True
    try:
        yield
    finally:
        _state.recomputing = before


def recompute_contexts() -> tuple[Any, Any]:
    """`context_fn` of non-reentrant `torch.utils.checkpoint.checkpoint`: (the first forward's context: none, the
    recomputation's: `recomputing()` is True inside it)."""
    return contextlib.nullcontext(), _recompute_context()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        D = x.shape[-1]
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(D).add_(eps).rsqrt_()  # [..., 1]
        ctx.save_for_backward(x, weight, r)
        return (x * r).mul_(weight)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, r = ctx.saved_tensors
        D = x.shape[-1]
        xhat = x * r
        grad_w = (g * xhat).reshape(-1, D).sum(0) if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_w, None
        gw = g * weight
        dot = torch.bmm(gw.reshape(-1, 1, D), xhat.reshape(-1, D, 1)).view(r.shape).div_(D)  # mean(ĝ·x̂) per row
        return gw.sub_(xhat.mul_(dot)).mul_(r), grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm y = w ⊙ x / √(mean(x²) + ε) over the last dim of `x` [..., D] (float32), `weight` [D]; its backward
    ∂x = r (ĝ − x̂ · mean(ĝ ⊙ x̂)) with r = 1/√(mean(x²)+ε), x̂ = r x, ĝ = w ⊙ g, and ∂w = Σ g ⊙ x̂. Zhang & Sennrich
    2019 (arXiv 1910.07467), eq. 4; transformers' `LlamaRMSNorm` numbers."""
    return _RMSNorm.apply(x, weight, eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    h = x.shape[-1] // 2
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x1, x2, o1, o2 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(g, cos, sin, -1.0), None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `x` [..., d] in the half-split layout (dims i and i + d/2 rotate together):
    (x₁, x₂) → (x₁ cos θ − x₂ sin θ, x₂ cos θ + x₁ sin θ), with `cos`, `sin` [..., d/2] broadcasting to x's
    half. Its backward is the rotation by −θ. Su et al. 2021 (RoFormer, arXiv 2104.09864) eq. 34, in
    transformers' `rotate_half` convention."""
    return _Rotary.apply(x, cos, sin)


class _LastLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, weight)
        if recomputing():  # nothing reads the recomputed output (module docstring)
            dev = a.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else a.dtype
            return a.new_zeros(*a.shape[:-1], weight.shape[0], dtype=dtype)
        return F.linear(a, weight)  # under autocast in its dtype, as transformers' call

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, weight = ctx.saved_tensors
        g, w = g.to(a.dtype), weight.to(a.dtype)  # autocast: bf16 products, the weight's gradient cast back
        grad_a = g @ w if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])).to(weight.dtype)
        return grad_a, grad_w


def _float32(x: torch.Tensor) -> bool:
    """Activations in float32 and no autocast: where the fused paths compute what transformers' do."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)


def _plain_linear(m: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return type(m) is torch.nn.Linear and m.bias is None and not isinstance(m.weight, DTensor)


def _norm_forward(norm: Any, original: Any) -> Any:
    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        w = norm.weight
        if not _float32(hidden_states) or w.dtype != torch.float32 or isinstance(w, DTensor):
            return original(hidden_states)
        return rms_norm(hidden_states, w, norm.variance_epsilon)
    return forward


def _mlp_forward(mlp: Any, original: Any) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _plain_linear(mlp.down_proj):
            return original(x)
        return _LastLinear.apply(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), mlp.down_proj.weight)
    return forward


def _attention_forward(attn: Any, original: Any) -> Any:
    from credo.models.prefix_attention import prefix_attention

    def forward(hidden_states: torch.Tensor, position_embeddings: Any = None, attention_mask: Any = None,
                cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        layout = kwargs.get("credo_prefix_layout")
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        d = attn.head_dim
        if layout is None or cache is not None or kwargs.get("past_key_values") is not None or cos is None \
                or hidden_states.shape[0] != 1 or not _float32(hidden_states) \
                or not torch.equal(cos[..., : d // 2], cos[..., d // 2:]) \
                or not torch.equal(sin[..., : d // 2], sin[..., d // 2:]):
            return original(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                            cache=cache, **kwargs)
        N = hidden_states.shape[1]
        c, s = cos[0, :, None, : d // 2], sin[0, :, None, : d // 2]  # [N, 1, d/2]
        q = rotary(attn.q_proj(hidden_states)[0].view(N, -1, d), c, s)  # [N, H, d]
        k = rotary(attn.k_proj(hidden_states)[0].view(N, -1, d), c, s)  # [N, Hkv, d]
        v = attn.v_proj(hidden_states)[0].view(N, -1, d)
        dropout = attn.attention_dropout if attn.training else 0.0
        out = prefix_attention(q, k, v, layout, attn.scaling, dropout)  # [N, H, d]
        return attn.o_proj(out.reshape(1, N, -1)), None
    return forward


def fuse_decoder_layers(model: torch.nn.Module) -> int:
    """Swap the forwards of `model`'s Llama-family RMSNorms (`NORMS`), attentions (`ATTENTIONS`; packed-row calls)
    and the MLPs of its `LAYERS` decoder layers for the fused ones (module docstring). Idempotent; returns the
    number of modules swapped (0 for other architectures)."""
    mlps = {id(layer.mlp) for layer in model.modules() if type(layer).__name__ in LAYERS and hasattr(layer, "mlp")}
    swapped = 0
    for m in model.modules():
        name = type(m).__name__
        if getattr(m, "_credo_fused", False):
            continue
        original = types.MethodType(type(m).forward, m)
        if name in NORMS:
            m.forward = _norm_forward(m, original)
        elif name in ATTENTIONS:
            m.forward = _attention_forward(m, original)
        elif id(m) in mlps and all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            m.forward = _mlp_forward(m, original)
        else:
            continue
        m._credo_fused = True
        swapped += 1
    return swapped
