"""TinyLM: a compact decoder-only transformer written for speed on a CPU.

Pre-norm blocks (RMSNorm), rotary position embeddings, fused QKV projection, GELU MLP, tied input/output
embeddings, and a preallocated KV cache for decoding. Saved as `config.json` + `model.safetensors`.

The same blocks also cover the Llama family (grouped-query attention, SwiGLU MLP, QKV bias as in Qwen2,
untied output head): `models.hf` copies a Hugging Face Llama/Qwen2 model's weights into a TinyLM and uses it
as the fast decoding engine, while the trainer keeps the Hugging Face model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from credo.models.kv_cache import KVCache
from credo.models.packed import DENSE, DenseLinears, PackedLinears, pack, worth_packing


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
        lin: DenseLinears = DENSE,
    ) -> torch.Tensor:
        """Whole sequences, or a block of tokens appended to `cache` (prefill); one-token decoding is `decode`.
        `lin` does the weight products (plain; packed weights in a generation call's prefill)."""
        B, t, d = x.shape
        H, Hkv, Dh = self.n_heads, self.kv_heads, self.dh
        qkv = lin.linear(self.ln1(x), self.qkv.weight, self.qkv.bias)
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
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=H != Hkv)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
        x = x + lin.linear(a.transpose(1, 2).reshape(B, t, d), self.proj.weight)
        return x + lin.linear(self._act(lin.linear(self.ln2(x), self.up.weight)), self.down.weight)

    def decode(
        self, x: torch.Tensor, rot: torch.Tensor, bias: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, slot: int,
        lin: DenseLinears = DENSE,
    ) -> torch.Tensor:
        """One new token per row, x [B, d], written to cache slot `slot`; attends over the cache's whole storage
        ck/cv [B, Hkv, S, Dh] with the additive `bias` [B·Hkv, 1, S] (0 or -inf) masking pad and empty slots.

        The same maths as `forward` in fewer, larger kernels, since at one token per row each op costs more to
        dispatch than to compute: RoPE of all query and key heads is one batched matmul by the rows' rotation
        matrices `rot` [B, Dh, Dh] (see `TinyLM.rotations`); scale and mask go into the score matmul
        (baddbmm); the residual adds go into the output projections (addmm); a plain bmm attention beats the
        CPU flash kernel ~10x at one query. `lin` does the weight products (`models.packed`: plain, or on
        prepacked weights inside `TinyLM.packed` / `TinyLM.decoding_on`).
        """
        B, d = x.shape
        H, Hkv, Dh = self.n_heads, self.kv_heads, self.dh
        qkv = lin.linear(self.ln1(x), self.qkv.weight, self.qkv.bias)  # [B, (H + 2·Hkv)·Dh]
        qk = lin.bmm(qkv[:, : (H + Hkv) * Dh].view(B, H + Hkv, Dh), rot)  # rotated q and k heads
        ck[:, :, slot] = qk[:, H:]
        cv[:, :, slot] = qkv[:, (H + Hkv) * Dh :].view(B, Hkv, Dh)
        q = qk[:, :H].reshape(B * Hkv, H // Hkv, Dh)  # query heads grouped by their key/value head
        S = ck.shape[2]
        scores = lin.baddbmm(bias, q, ck.view(B * Hkv, S, Dh).transpose(1, 2), alpha=Dh**-0.5)
        a = lin.bmm(scores.softmax(-1), cv.view(B * Hkv, S, Dh)).view(B, d)
        x = lin.residual(x, a, self.proj.weight)
        return lin.residual(x, self._act(lin.linear(self.ln2(x), self.up.weight)), self.down.weight)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP's nonlinearity on the up projection: SwiGLU (gate and up halves) or tanh-GELU."""
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(h, approximate="tanh")


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
        self._linears: DenseLinears = DENSE  # prepacked weights inside `packed` / `decoding_on`
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.max_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        h = cos.shape[1]  # RoPE as a matrix (`rotations`): x @ (eye·cos + swap·sin), per position
        self.register_buffer("rope_eye", torch.eye(2 * h), persistent=False)
        swap = torch.zeros(2 * h, 2 * h)
        swap[torch.arange(h), torch.arange(h) + h] = 1.0  # x1 · sin into the second half
        swap[torch.arange(h) + h, torch.arange(h)] = -1.0  # -x2 · sin into the first half
        self.register_buffer("rope_swap", swap, persistent=False)
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

    def _head_weight(self) -> torch.Tensor:
        """The output projection [V, D]: the embedding when tied."""
        return self.embed.weight if self.head is None else self.head.weight

    def _logits(self, x: torch.Tensor, lin: DenseLinears = DENSE) -> torch.Tensor:
        """The LM head on hidden states [..., D] → logits [..., V] (`lin`: plain, or packed weights in decoding)."""
        return lin.linear(self.ln_f(x), self._head_weight())

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
        return self._logits(self.hidden_states(input_ids, images))

    chunkable = True  # `hidden_states` + `output_logits` compose to `forward` (trainer.logprobs reads this)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head (final norm + output projection) on hidden states [..., D] → logits [..., V]."""
        return self._logits(hidden)

    def hidden_states(self, input_ids: torch.Tensor, images: list | None = None) -> torch.Tensor:
        """The transformer body's output [B, T, D] before the final norm: `forward` without the LM head, so the
        trainer can apply the head to a few positions at a time (`trainer.logprobs`)."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds model max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self._rope(pos)
        x = self.embed_inputs(input_ids, images)
        for blk in self.blocks:
            x = blk(x, cos, sin, None)
        return x

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache with room for `max_len` slots; storage is allocated as `step` fills it."""
        c = self.cfg
        w = self.embed.weight
        shape = (c.n_layers, batch_size, c.kv_heads, 0, c.d_model // c.n_heads)
        k_buf, v_buf = w.new_empty(c.n_layers * batch_size * c.kv_heads * max_len * shape[-1]), w.new_empty(
            c.n_layers * batch_size * c.kv_heads * max_len * shape[-1])
        return KVCache(
            k=k_buf[:0].view(shape),
            v=v_buf[:0].view(shape),
            k_buf=k_buf,
            v_buf=v_buf,
            key_valid=torch.zeros(batch_size, 0, dtype=torch.bool, device=w.device),
            next_pos=torch.zeros(batch_size, dtype=torch.long, device=w.device),
            max_len=max_len,
        )

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token of one row takes (`new_cache`): keys and values of every layer."""
        c = self.cfg
        return 2 * c.n_layers * c.kv_heads * (c.d_model // c.n_heads) * self.embed.weight.element_size()

    def rotations(self, pos: torch.Tensor) -> torch.Tensor:
        """RoPE as matrices: rows' rotations [B, Dh, Dh] for positions `pos` [B], so that x @ R equals
        `apply_rope(x)` of a head x [Dh] (cos on the diagonal, ±sin between the two halves)."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [B, Dh/2]
        cos, sin = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]  # [B, 1, Dh]
        return torch.addcmul(self.rope_eye * cos, self.rope_swap, sin)

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
        unpadded sequence. One real token per row (the sampler's decoding) takes `Block.decode`.
        """
        B, t = input_ids.shape
        start = cache.length
        cache.reserve(start + t)
        if t == 1 and attention_mask is None:
            return self._decode(input_ids, cache, images)
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
        lin = self._linears  # packed weights inside `packed` / `decoding_on` (a call's prefill)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, mask, (cache.k[i], cache.v[i], start), lin)
        return self._logits(x[:, -1:] if last_only else x, lin)

    def _decode(self, input_ids: torch.Tensor, cache: KVCache, images: list | None) -> torch.Tensor:
        """`step` for one real token per row: logits [B, 1, V]."""
        B = input_ids.shape[0]
        slot = cache.length
        cache.length = slot + 1
        cache.key_valid[:, slot] = True
        rot = self.rotations(cache.next_pos.clamp(max=self.cfg.max_len - 1))
        cache.next_pos = cache.next_pos + 1
        Hkv, S = self.cfg.kv_heads, cache.k.shape[3]
        bias = torch.zeros(B, 1, 1, S, dtype=cache.k.dtype, device=cache.k.device)
        bias = bias.masked_fill_(~cache.key_valid[:, None, None], float("-inf")).expand(B, Hkv, 1, S)
        bias = bias.reshape(B * Hkv, 1, S)
        x = self.embed_inputs(input_ids, images)[:, 0]
        lin = self._linears.for_rows(B)  # packed copies laid out for B rows where the kernel needs it
        for i, blk in enumerate(self.blocks):
            x = blk.decode(x, rot, bias, cache.k[i], cache.v[i], slot, lin)
        return self._logits(x[:, None], lin)  # [B, 1, V]

    def pack_linears(self, rows: int, new_tokens: int) -> PackedLinears | None:
        """Packed copies (`models.packed.pack`) of the weights one-token decoding multiplies by (each block's qkv,
        proj, up and down, and the head), laid out for `rows` rows: ~2x faster products at decoding's few rows on a
        CPU. None when a call of `rows` rows × up to `new_tokens` new tokens would not gain the packing back
        (`worth_packing`) or oneDNN cannot pack these weights (neither float32 on a CPU nor bfloat16 on one without
        bfloat16 dot products, which packs float32 copies: `models.packed.Bf16OnFp32Linears`). The copies are of
        the weights as they are now: stale once the weights change."""
        if not worth_packing(rows, new_tokens):
            return None
        weights = [w for blk in self.blocks for w in (blk.qkv.weight, blk.proj.weight, blk.up.weight,
                                                       blk.down.weight)]
        return pack([*weights, self._head_weight()], batch_hint=rows)

    @contextlib.contextmanager
    def decoding_on(self, linears: DenseLinears) -> Iterator[None]:
        """Within the block, decoding (`step`, the prefill included) multiplies by `linears`: packed copies from
        `pack_linears` of the weights as they are (the caller answers for that, and keeps or drops them after).
        Nested inside a block already on packed copies, those stay."""
        if isinstance(self._linears, PackedLinears):
            yield
            return
        self._linears = linears
        try:
            yield
        finally:
            self._linears = DENSE

    def packed(self, rows: int, new_tokens: int) -> contextlib.AbstractContextManager[None]:
        """`decoding_on` copies made on entry (`pack_linears`) and dropped on exit; a no-op when `pack_linears`
        gives none or inside a block already on packed copies. The weights must not change inside the block."""
        linears = None if isinstance(self._linears, PackedLinears) else self.pack_linears(rows, new_tokens)
        return contextlib.nullcontext() if linears is None else self.decoding_on(linears)

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
