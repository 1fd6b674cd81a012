"""The native generation backend: credo's KV-cached batched sampler (`rollout.sampler`) behind the `Generator`
protocol (`rollout.backend`).

What decodes:
- `TinyLM` / `TinyVLM`: the trainer's module itself (no copy; `sync_weights` has nothing to move).
- Hugging Face Llama-family models (`model.native_decode`, the default): a native engine, a `TinyLM` copy of the
  weights in the compute dtype (`models.hf.build_native_engine`); `sync_weights` copies the trainer's weights into
  it, all tensors or none (`models.hf.copy_into_native`): `policy.engine_weights()`, which for a LoRA policy are the
  merged weights W + (α/r)·B A (`models.lora`). On a CPU the engine decodes on packed copies of its weights
  (`TinyLM.pack_linears`, `models.packed`), made by the first call that gains them back and kept for later calls
  until `sync_weights` changes the weights or `sleep` frees them (as vLLM keeps its weights laid out for its
  kernels between calls). `sleep` frees the engine's weights and their packed copies while the trainer updates (the
  loop calls it before each update stage); the next `sync_weights` allocates and fills the weights again.
- Any other model with `new_cache` / `step` (a `models.policy.Decoder`: other Hugging Face architectures through
  their own cache, Qwen2-VL): the model itself.

Requests are expanded into rows (a request's `n` rows side by side) and decoded in batches of at most `max_batch`
rows whose KV cache fits `kv_cache_bytes` (as vLLM sizes its batches by a KV-cache budget; its CPU backend's
`VLLM_CPU_KVCACHE_SPACE`): SmolLM2-135M keeps 46 KB per token in float32, so a 512-row batch of 110-token rows
would hold 2.6 GB; under the 1 GiB default on a CPU (CPU_KV_CACHE_BYTES; none on a GPU) it decodes 211 rows at a
time. Rows of requests without a seed share the `rng` of the call, drawn in row order exactly as the sampler always
drew it, so a run that moved onto this backend keeps its random stream; the rows of a request with a seed draw from
`torch.Generator().manual_seed(seed)`, the request's own stream, and seeded requests are decoded together (whole
requests per batch), so each one's completions are those it gets alone, up to floating-point rounding of the batch.
The decoder is put in eval mode while it decodes and its mode restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from credo.models.kv_cache import KVCache
from credo.models.packed import MIN_ROWS, PackedLinears
from credo.models.policy import Decoder
from credo.models.tiny import TinyLM
from credo.models.tokenizer import Tokenizer
from credo.rollout.backend import Completion, GenerationRequest, SamplingParams, cut_at_stop_text
from credo.rollout.sampler import Decoded, generate

CPU_KV_CACHE_BYTES = 2**30  # the KV cache one decode batch holds on a CPU by default (`rollout.kv_cache_gb`)


class NativeGenerator:
    """The native backend (module docstring). `policy` is the trainer's model, `tokenizer` its tokenizer.

    `native`: decode a Hugging Face Llama-family model on a native engine copy (None: the policy's
    `native_decode`, off for other models); `max_batch`: rows per decode batch; `kv_cache_bytes`: the most KV
    cache one decode batch may hold (`rollout.kv_cache_gb`; a row takes its prompt + `max_new_tokens` slots; None:
    CPU_KV_CACHE_BYTES on a CPU, no limit on a GPU; 0, or a decoder that does not report `kv_bytes_per_token`:
    `max_batch` alone); `max_len` / `image_size`: override
    the model's (`policy.cfg.max_len`, `policy.cfg.image_size`; no limit / 48 when it has none); `pack`: the
    engine decodes on packed copies of its weights where that pays (`TinyLM.pack_linears`; `rollout.pack_weights`),
    kept between calls until `sync_weights` or `sleep` (module docstring); `keep_packed=False`: made for each call
    and dropped at its end instead, for a generator the loop never puts to sleep (a frozen judge's or reasoner's,
    whose copies would otherwise stay resident through every update).
    Raises TypeError when neither the policy nor an engine for it can step-decode.
    """

    def __init__(
        self,
        policy: Any,
        tokenizer: Tokenizer,
        *,
        native: bool | None = None,
        max_batch: int = 512,
        kv_cache_bytes: int | None = None,
        max_len: int | None = None,
        image_size: int | None = None,
        pack: bool = True,
        keep_packed: bool = True,
    ) -> None:
        self.policy, self.tokenizer, self.max_batch, self.pack = policy, tokenizer, max_batch, pack
        self.keep_packed, self.kv_cache_bytes = keep_packed, kv_cache_bytes
        cfg = getattr(policy, "cfg", None)
        self.max_len: int | None = max_len if max_len is not None else getattr(cfg, "max_len", None)
        self.image_size: int = image_size or getattr(cfg, "image_size", 48)
        self.engine = None  # a separate copy of the weights that `sync_weights` refreshes, or None
        self.asleep = False  # the engine's weights freed (`sleep`) until the next `sync_weights`
        self._shapes: dict[torch.nn.Parameter, torch.Size] = {}  # the engine weights' shapes while asleep
        self.packed: PackedLinears | None = None  # the engine's packed weights, kept until sync_weights / sleep
        if getattr(policy, "native_decode", False) if native is None else native:
            from credo.models.hf import HFPolicy, build_native_engine

            if isinstance(policy, HFPolicy):
                self.engine = build_native_engine(policy)
        self.decoder: Decoder = _LastPosition(self.engine) if self.engine is not None else policy
        if not (callable(getattr(self.decoder, "new_cache", None)) and callable(getattr(self.decoder, "step", None))):
            raise TypeError(f"{type(policy).__name__} cannot step-decode (no new_cache/step): the native backend "
                            "cannot generate with it")

    def sync_weights(self, policy: Any) -> None:
        """Make the engine decode with `policy`'s current weights: copy them into the native engine (all tensors or
        RuntimeError before any is written); nothing to do when the decoder is the policy's own module. A different
        policy than the one this generator was built on raises ValueError (its module would be overwritten)."""
        if policy is not self.policy:
            raise ValueError("sync_weights: this generator was built on another policy object; build a new one")
        if self.engine is not None:
            from credo.models.hf import copy_into_native

            self.packed = None  # copies of the weights being replaced
            if self.asleep:  # storage back at the recorded shapes; filled below (or raises, still asleep)
                for p in self.engine.parameters():
                    p.data = torch.empty(self._shapes[p], dtype=p.dtype, device=p.device)
            copy_into_native(policy.engine_weights(), self.engine)  # merged weights for a LoRA policy
            self.asleep = False

    def sleep(self) -> None:
        """Free the engine copy's weights until the next `sync_weights`, which allocates and fills them again: the
        rollout engine's sleep mode that verl uses around its actor update (vLLM's `LLM.sleep(level=2)`: weights
        discarded, not offloaded), for the update's memory; the copy is stale after an update anyway. The packed
        copies of the weights go too. SmolLM2-135M in float32: 0.54 GB less resident during the update, and as
        much again for kept packed copies (always float32). Generating while asleep raises RuntimeError. A no-op
        when the decoder is the policy's own module (nothing is a copy) or already asleep."""
        if self.engine is None or self.asleep:
            return
        self.packed = None
        self._shapes = {p: p.shape for p in self.engine.parameters()}  # tied weights: one parameter, once
        for p in self.engine.parameters():
            p.data = p.data.new_empty(0)
        self.asleep = True

    def generate(
        self, requests: list[GenerationRequest], params: SamplingParams, rng: torch.Generator | None = None
    ) -> list[list[Completion]]:
        """`result[i]`: `requests[i].n` completions (the `Generator` contract, `rollout.backend`)."""
        if self.asleep:
            raise RuntimeError("the native engine is asleep (`sleep`): call sync_weights(policy) before generating")
        rows = [r for r in requests for _ in range(r.n)]
        for r in requests:
            if not 0 <= r.prompt_logprobs < len(r.prompt_ids):
                raise ValueError(f"prompt_logprobs={r.prompt_logprobs}: needs 0 <= k < len(prompt_ids) = "
                                 f"{len(r.prompt_ids)}")
        done: list[Completion | None] = [None] * len(rows)
        cap = self.rows_per_batch(max((len(r.prompt_ids) for r in requests), default=0) + params.max_new_tokens)
        with self._eval_mode(), self._on_packed(min(len(rows), cap), params.max_new_tokens):
            for idx, g in self._batches(rows, rng, cap):
                for k, d in zip(idx, self._decode([rows[k] for k in idx], params, g), strict=True):
                    done[k] = self._completion(d, rows[k], params)
        out, k = [], 0
        for r in requests:
            out.append(done[k : k + r.n])
            k += r.n
        return out

    def rows_per_batch(self, slots: int) -> int:
        """Rows decoded at once when each row takes up to `slots` KV-cache slots: `max_batch`, fewer when their
        cache would exceed `kv_cache_bytes` (at least one row)."""
        per_token = getattr(self.decoder, "kv_bytes_per_token", None)
        budget = self.kv_cache_bytes
        if budget is None:
            params = getattr(self.decoder, "parameters", None)
            device = next(iter(params()), torch.zeros(0)).device if callable(params) else torch.device("cpu")
            budget = CPU_KV_CACHE_BYTES if device.type == "cpu" else 0
        if budget <= 0 or not callable(per_token):
            return self.max_batch
        return max(1, min(self.max_batch, budget // max(1, per_token() * slots)))

    def _batches(
        self, rows: list[GenerationRequest], rng: torch.Generator | None, cap: int
    ) -> Iterator[tuple[list[int], torch.Generator | list[torch.Generator] | None]]:
        """Row indices per decode batch and its random stream(s): unseeded rows in order, `cap` at a time, on
        `rng`; then the seeded requests, whole requests packed up to `cap` rows (a larger request alone), each
        row on its request's own stream (`sampler.generate`: a request's draws do not depend on its batch mates)."""
        shared = [k for k, r in enumerate(rows) if r.seed is None]
        for i in range(0, len(shared), cap):
            yield shared[i : i + cap], rng
        seeded: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            if r.seed is not None:
                seeded.setdefault(id(r), []).append(k)
        idx: list[int] = []
        gens: list[torch.Generator] = []
        for req in seeded.values():
            if idx and len(idx) + len(req) > cap:
                yield idx, gens
                idx, gens = [], []
            g = torch.Generator().manual_seed(rows[req[0]].seed)
            idx, gens = idx + req, gens + [g] * len(req)
        if idx:
            yield idx, gens

    def _decode(
        self, rows: list[GenerationRequest], params: SamplingParams, g: torch.Generator | list[torch.Generator] | None
    ) -> list[Decoded]:
        tok = self.tokenizer
        images = [r.images for r in rows] if any(r.images for r in rows) else None
        stop_ids = [tok.encode(s) for s in params.stop]
        return generate(self.decoder, [list(r.prompt_ids) for r in rows], params, list(tok.eos_ids), tok.pad_id,
                        stop_ids, g, images, [r.prompt_logprobs for r in rows])

    def _completion(self, d: Decoded, r: GenerationRequest, params: SamplingParams) -> Completion:
        k = r.prompt_logprobs
        plp = d.prompt_logprobs[-k:].clone() if k and d.prompt_logprobs is not None else None
        c = Completion(d.completion_ids, d.logprobs, d.finish_reason, plp)
        return cut_at_stop_text(c, self.tokenizer.decode, params.stop)

    @contextlib.contextmanager
    def _on_packed(self, rows: int, new_tokens: int) -> Iterator[None]:
        """The engine decoding on packed copies of its weights in the block: those kept from an earlier call when
        they serve this one as fresh copies would (`PackedLinears.for_call`: a call's draws never depend on the
        calls before it), else made now when a call of `rows` rows × ≤ `new_tokens` tokens gains them back
        (`TinyLM.pack_linears`), and kept after it when `keep_packed`; plain products when packing is off (`pack`;
        kept copies are dropped) or for fewer than MIN_ROWS rows."""
        if not self.pack:
            self.packed = None
        linears = None
        if self.engine is not None and self.pack and rows >= MIN_ROWS:
            if self.packed is not None:  # kept copies serve the call only as fresh ones would, else go first
                self.packed = self.packed.for_call(rows)
            linears = self.packed if self.packed is not None else self.engine.pack_linears(rows, new_tokens)
        if linears is None:
            yield
            return
        self.packed = linears if self.keep_packed else None
        with self.engine.decoding_on(linears):
            yield

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """The decoder in eval mode (no dropout) while decoding; its mode restored after."""
        module = self.decoder if isinstance(self.decoder, torch.nn.Module) else None
        was = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            yield
        finally:
            if module is not None:
                module.train(was)


class _LastPosition:
    """The native engine as a `Decoder` whose `step` computes only the last position's logits [B, 1, V]: a prompt
    block over a real model's vocabulary (B × P × 150k floats) would otherwise dominate memory."""

    def __init__(self, engine: TinyLM) -> None:
        self.engine = engine

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.engine.new_cache(batch_size, max_len)

    def step(self, input_ids: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.engine.step(input_ids, cache, attention_mask, last_only=True)

    def kv_bytes_per_token(self) -> int:
        return self.engine.kv_bytes_per_token()

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.engine.parameters()


__all__ = ["NativeGenerator"]
