"""TinyLM: a compact decoder-only transformer written for speed on a CPU.

Pre-norm blocks (RMSNorm), rotary position embeddings, fused QKV projection, GELU MLP, tied input/output
embeddings, and a preallocated KV cache for decoding. Saved as `config.json` + `model.safetensors`.

The same blocks also cover the Llama family (grouped-query attention, SwiGLU MLP, QKV bias as in Qwen2,
untied output head): `models.hf` copies a Hugging Face Llama/Qwen2 model's weights into a TinyLM and uses it
as the fast decoding engine, while the trainer keeps the Hugging Face model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn


@dataclass
class TinyConfig:
    vocab_size: int = 100
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_len: int = 512  # longest sequence (prompt + completion) the RoPE tables cover
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    n_kv_heads: int = 0  # grouped-query attention: key/value heads (0: n_heads)
    mlp: str = "gelu"  # "gelu" (up, down) or "swiglu" (fused gate+up, down) as in Llama/Qwen2
    qkv_bias: bool = False  # bias on the QKV projection (Qwen2)
    tie_embeddings: bool = True  # output head shares the input embedding

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


@dataclass
class KVCache:
    """Preallocated keys/values for every layer, plus which slots hold real (non-pad) tokens."""

    k: torch.Tensor  # [L, B, Hkv, S, Dh]
    v: torch.Tensor  # [L, B, Hkv, S, Dh]
    key_valid: torch.Tensor  # [B, S] bool
    next_pos: torch.Tensor  # [B] long, RoPE position of the next token of each row
    length: int = 0  # slots filled so far
    any_pad: bool = False  # whether key_valid has any False in the filled part


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(max_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float), inv)  # [S, Dh/2]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h], x[..., h:]) by position angles; x [B, H, t, Dh], cos/sin [B, 1, t, Dh/2]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.kv_heads, self.dh = cfg.n_heads, cfg.kv_heads, d // cfg.n_heads
        self.swiglu = cfg.mlp == "swiglu"
        self.ln1 = RMSNorm(d, cfg.norm_eps)
        self.qkv = nn.Linear(d, (self.n_heads + 2 * self.kv_heads) * self.dh, bias=cfg.qkv_bias)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = RMSNorm(d, cfg.norm_eps)
        self.up = nn.Linear(d, (2 if self.swiglu else 1) * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        B, t, d = x.shape
        H, Hkv, Dh = self.n_heads, self.kv_heads, self.dh
        qkv = self.qkv(self.ln1(x))
        if H == Hkv:
            q, k, v = qkv.view(B, t, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 × [B, H, t, Dh]
        else:
            q = qkv[..., : H * Dh].view(B, t, H, Dh).transpose(1, 2)  # [B, H, t, Dh]
            k, v = qkv[..., H * Dh :].view(B, t, 2, Hkv, Dh).permute(2, 0, 3, 1, 4)  # 2 × [B, Hkv, t, Dh]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            ck, cv, start = cache
            ck[:, :, start : start + t] = k
            cv[:, :, start : start + t] = v
            k, v = ck[:, :, : start + t], cv[:, :, : start + t]
        if t == 1 and cache is not None:  # one-token decode: a plain bmm beats the CPU flash kernel ~10x here
            qg = q.view(B, Hkv, H // Hkv, Dh)  # query heads grouped by their key/value head
            scores = (qg @ k.transpose(-1, -2)) * Dh**-0.5  # [B, Hkv, H/Hkv, S]
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            a = (scores.softmax(-1) @ v).view(B, H, 1, Dh)
        elif mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=H != Hkv)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
        x = x + self.proj(a.transpose(1, 2).reshape(B, t, d))
        h = self.up(self.ln2(x))
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return x + self.down(F.silu(gate) * up)
        return x + self.down(F.gelu(h, approximate="tanh"))


class TinyLM(nn.Module):
    """Decoder-only LM implementing the `Policy` protocol."""

    model_type = "tinylm"
    config_class = TinyConfig

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.kv_heads:
            raise ValueError(f"d_model={cfg.d_model} must be divisible by n_heads={cfg.n_heads}, "
                             f"and n_heads by n_kv_heads={cfg.kv_heads}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.max_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2 style scaled init of residual projections
            nn.init.normal_(blk.proj.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)
            nn.init.normal_(blk.down.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = pos.clamp(0, self.cfg.max_len - 1)
        return self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)  # [B, 1, t, Dh/2]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        w = self.embed.weight if self.head is None else self.head.weight
        return F.linear(self.ln_f(x), w)  # [B, t, V]

    def embed_inputs(self, input_ids: torch.Tensor, images: list | None = None) -> torch.Tensor:
        """Token embeddings [B, t, D]. A text model takes no images (`TinyVLM` overrides this)."""
        if images is not None and any(images):
            raise ValueError("this model takes no image input (build a TinyVLM: model.kind = \"tinyvlm\")")
        return self.embed(input_ids)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, images: list | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V] for right-padded `input_ids` [B, T] (padding only after real tokens); `images`: one
        list of images per row (vision models only)."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds model max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self._rope(pos)
        x = self.embed_inputs(input_ids, images)
        for blk in self.blocks:
            x = blk(x, cos, sin, None)
        return self._logits(x)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        c = self.cfg
        shape = (c.n_layers, batch_size, c.kv_heads, max_len, c.d_model // c.n_heads)
        w = self.embed.weight
        return KVCache(
            k=torch.empty(shape, dtype=w.dtype, device=w.device),
            v=torch.empty(shape, dtype=w.dtype, device=w.device),
            key_valid=torch.zeros(batch_size, max_len, dtype=torch.bool, device=w.device),
            next_pos=torch.zeros(batch_size, dtype=torch.long, device=w.device),
        )

    def step(
        self,
        input_ids: torch.Tensor,
        cache: KVCache,
        attention_mask: torch.Tensor | None = None,
        last_only: bool = False,
        images: list | None = None,
    ) -> torch.Tensor:
        """Append `input_ids` [B, t] to the cache and return their logits [B, t, V] ([B, 1, V] if `last_only`).

        `attention_mask` [B, t] marks real tokens (False = left padding of the prompt); pad slots are never
        attended to, and RoPE positions count real tokens only, so a left-padded row scores exactly like the
        unpadded sequence.
        """
        B, t = input_ids.shape
        start = cache.length
        if start + t > cache.k.shape[3]:
            raise ValueError(f"KV cache full: {start}+{t} > {cache.k.shape[3]}")
        dev = input_ids.device
        valid = torch.ones(B, t, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
        pos = cache.next_pos[:, None] + valid.long().cumsum(1) - 1  # [B, t]
        cache.next_pos = pos[:, -1] + 1
        cache.key_valid[:, start : start + t] = valid
        cache.any_pad = cache.any_pad or not bool(valid.all())
        cache.length = start + t
        cos, sin = self._rope(pos.clamp_min(0))
        mask = None
        if cache.any_pad or (start > 0 and t > 1):
            keys = cache.key_valid[:, None, None, : start + t]  # [B, 1, 1, S]
            causal = torch.ones(t, start + t, dtype=torch.bool, device=dev).tril(start)  # [t, S]
            diag = torch.zeros(t, start + t, dtype=torch.bool, device=dev)
            diag[:, start:] = torch.eye(t, dtype=torch.bool, device=dev)  # pad queries see themselves: no NaN
            mask = (keys & causal) | diag
        x = self.embed_inputs(input_ids, images)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, mask, (cache.k[i], cache.v[i], start))
        return self._logits(x[:, -1:] if last_only else x)

    # ---- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model_type": self.model_type, **asdict(self.cfg)}, indent=1))
        save_model(self, str(d / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TinyLM:
        d = Path(directory)
        spec = json.loads((d / "config.json").read_text())
        spec.pop("model_type", None)
        model = cls(cls.config_class(**spec))
        load_model(model, str(d / "model.safetensors"))
        return model
