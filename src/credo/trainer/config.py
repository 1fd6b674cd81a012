"""Typed run configuration: one dataclass per concern, TOML presets, dotted command-line overrides.

    credo train configs/arith.toml rl.steps=50 rl.lr=1e-4

A key that does not exist, or a value of the wrong type, raises `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credo.trainer.config_rewards import (  # re-exported: the reward sections of Config
    CuriosityConfig,
    JudgeConfig,
    MemoryConfig,
    R3Config,
    RewardConfig,
)


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it. (Not a `credo.data.InputError`: this module, which
    the command line imports before torch, imports no torch.)"""


@dataclass
class LoraConfig:
    """LoRA adapters through peft (models/lora.py): only the adapters train; the engines sample W + (α/r)·B A."""

    rank: int = 0  # r, the adapters' rank (0: off, full fine-tuning)
    alpha: float = 16.0  # α: the adapted layer adds (α/r)·B A x
    dropout: float = 0.0  # dropout on the adapters' input (train mode only)
    target_modules: list[str] = field(default_factory=lambda: [  # Llama/Qwen2/Mistral linear layers; or ["all-linear"]
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ])


@dataclass
class ModelConfig:
    path: str = ""  # load a saved model directory instead of building a fresh TinyLM
    kind: str = "tinylm"  # the fresh model: "tinylm" (text) or "tinyvlm" (TinyLM + patch embedding of images)
    image_size: int = 48  # tinyvlm: images are resized to this many pixels square
    patch_size: int = 8  # tinyvlm: square patch side; (image_size / patch_size)² image tokens per image
    d_model: int = 128  # TinyLM width
    n_layers: int = 4  # TinyLM depth
    n_heads: int = 4  # attention heads
    d_ff: int = 512  # MLP hidden width
    max_len: int = 192  # longest prompt + completion
    dtype: str = "float32"  # Hugging Face models: compute dtype float32 | bfloat16 | float16 (weights stay float32)
    device: str = "cpu"  # Hugging Face models: torch device (TinyLM runs on the CPU)
    gradient_checkpointing: bool = True  # Hugging Face models: recompute activations in the backward pass
    chat_template: bool = True  # Hugging Face models: frame prompts with the tokenizer's chat template
    native_decode: bool = True  # Hugging Face Llama/Qwen2/Mistral: decode on credo's native engine
    fused_layers: bool = True  # Hugging Face Llama/Qwen2/Mistral: fused norm, rotary and MLP paths (models/fused.py)
    lora: LoraConfig = field(default_factory=LoraConfig)  # Hugging Face text models: LoRA adapters (rank 0: off)


@dataclass
class EnvConfig:
    name: str = "arith"  # environment name (see credo.envs.ENVS)
    sft_depths: list[int] = field(default_factory=lambda: [1, 2, 3])  # arith: warm-start depths
    rl_depths: list[int] = field(default_factory=lambda: [4])  # arith: RL / evaluation depths
    operand_max: int = 9  # arith: largest operand
    value_max: int = 99  # arith: intermediate values stay in [0, value_max]
    width: int = 5  # arith: chains are padded with `+0` (identity) operations to this many (0: none)
    n_sft: int = 6000  # warm-start examples
    n_train: int = 4000  # RL training prompts
    n_test: int = 200  # held-out evaluation prompts
    seed: int = 0  # problem-generator seed
    options: dict[str, Any] = field(default_factory=dict)  # environment-specific options, passed through
    train_files: list[str] = field(default_factory=list)  # dataset env: RL training files (JSONL, parquet, CSV)
    test_files: list[str] = field(default_factory=list)  # dataset env: held-out evaluation files
    sft_files: list[str] = field(default_factory=list)  # dataset env: warm-start files (need a solution field)
    fields: dict[str, str] = field(default_factory=dict)  # dataset env: credo field -> column name
    verifier: str = ""  # integer|math|math_tagged|mcq|number_list|numeric|typed or "module:function" ("": env default)
    prompt_template: str = ""  # str.format template over the row's fields ("" = the env's default)
    max_prompt_tokens: int = 0  # drop longer prompts (policy tokens) at load (verl filter_overlong_prompts; 0: off)


@dataclass
class SFTConfig:
    enabled: bool = True  # run the warm start before RL (a fresh model only, unless on_model_path)
    on_model_path: bool = False  # also warm-start the model loaded from model.path (e.g. a pretrained model's
    # answer format), saved as start_model/ before RL
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # sequences per step
    lr: float = 3e-3  # peak AdamW learning rate (linear warm-up, cosine decay)
    warmup: int = 30  # warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    source: str = "reference"  # "reference": env.reference_completion; "self": the model's own correct samples
    # (rejection-sampling fine-tuning: trainer.sft.self_completions)
    self_samples: int = 4  # source=self: samples per "sft" example (temperature 1)
    self_max_new_tokens: int = 64  # source=self: length cap of those samples
    self_verifier: str = ""  # source=self: verifier that keeps a sample ("": the env's own; e.g. "numeric" when
    # the model does not write the env's answer format yet, which the reference completion then adds)


@dataclass
class RLConfig:
    steps: int = 80  # RL steps (one rollout batch each)
    prompts_per_step: int = 16  # distinct prompts per step
    group_size: int = 8  # samples per prompt (G)
    max_new_tokens: int = 128  # generation cap
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    advantage: str = "grpo"  # core.advantages.ADVANTAGES key
    loss: str = "ppo_clip"  # core.losses.LOSSES key
    aggregation: str = "token_mean"  # core.aggregation.AGGREGATIONS key
    credit: str = "none"  # core.credit.CREDIT key
    selection: str = "all"  # core.selection.SELECTION key
    eps_low: float = 0.2  # PPO clip, lower side
    eps_high: float = 0.2  # PPO clip, upper side (clip-higher when > eps_low)
    clip_ratio_c: float | None = None  # dual-clip PPO cap −c·A for A < 0 (verl: 3); None or 0 = off; must be > 1
    kl_coef: float = 0.0  # weight of the KL penalty to the reference (initial) policy
    kl_estimator: str = "k3"  # core.kl.KL_ESTIMATORS key
    ppo_epochs: int = 1  # passes over each rollout batch
    minibatches: int = 2  # optimizer steps per epoch
    lr: float = 5e-5  # AdamW learning rate (constant after warm-up)
    warmup_steps: int = 5  # linear learning-rate warm-up over the first optimizer steps
    weight_decay: float = 0.0  # AdamW weight decay
    adam_eps: float = 1e-8  # AdamW epsilon; larger values damp the normalised steps of tiny, noisy gradients
    max_grad_norm: float = 1.0  # gradient clipping
    recompute_old_logprobs: bool = False  # π_old from the trainer's forward, not the sampler's (on when dtype≠fp32)
    tis_cap: float = 0.0  # truncated importance sampling: token loss × min(π_old/π_sampler, C=tis_cap); 0: off
    max_tokens_per_microbatch: int = 0  # split minibatches into micro-batches of ≤ this many padded tokens (0: off)
    logprob_chunk: int = 512  # positions whose LM head + log-softmax run at once (trainer.logprobs)
    share_prefix: bool = True  # run a prompt shared by a group's rows once in the update (HF models; logprobs)
    prefix_pack_tokens: int = 1024  # share_prefix under activation checkpointing/FSDP: longest packed row (0: off)
    ssr: bool = False  # VL-Rethinker Selective Sample Replay in place of rl.selection (trainer.replay.ssr_select)
    ssr_alpha: float = 1.0  # SSR priority exponent: P(j) ∝ |A_j|^alpha (paper and code: 1)
    ssr_buffer: int = 0  # SSR replay history, in samples; 0 = half the rollout batch (released code)
    ssr_eps: float = 1e-4  # SSR replay priority smoothing: P(j) ∝ |A_j| + eps (released code: 1e-4)
    ssr_batch_frac: float = 0.5  # SSR batch size as a share of the rollout batch (released code: 0.5)
    ssr_replacement: bool = True  # SSR draws from the current batch with replacement (README and code)
    dynamic_sampling: bool = False  # DAPO dynamic sampling: re-roll until prompts_per_step informative groups
    dynamic_max_rounds: int = 3  # DAPO dynamic sampling: most extra rollout rounds per step
    overlong_cache: int = 0  # DAPO soft overlong punishment window L_cache, tokens (0 = off; paper 4096 of 20480)
    hicra_alpha: float = 0.2  # HICRA planning-token amplification α (rl.credit = "hicra"; paper: 0.2)
    hicra_refresh: int = 10  # HICRA: steps between re-mining strategic grams from correct rollouts (0: seeds only)
    hicra_min_support: float = 0.2  # HICRA: a gram is strategic when this share of correct solutions holds it
    hicra_ngram: list[int] = field(default_factory=lambda: [3, 4, 5])  # HICRA: strategic-gram lengths, in words
    mask_truncated: bool = False  # leave completions cut at max_new_tokens out of the loss (DAPO overlong filter,
    # TRL mask_truncated_completions); they still count in their group's reward statistics
    multiturn: bool = False  # multi-turn rollouts with tool calls (rollout.multiturn); observations never trained
    tools: list[str] = field(default_factory=lambda: ["crop_image", "select_frames"])  # envs.tools.TOOLS names
    max_turns: int = 4  # multi-turn: most policy turns per trajectory
    max_images: int = 16  # multi-turn: most images per trajectory (prompt + observations)
    segments: bool = True  # label perception/answer/reasoning tokens from the tags (MoCA routes credit by them)
    planning_metrics: bool = True  # log strategic-gram metrics (semantic entropy, planning entropy) without HICRA
    moca_alpha_protect: float = 0.2  # MoCA: credit added to correct perception (R_P = 1) of failed rollouts (inferred)
    moca_alpha_punish: float = 0.2  # MoCA: extra blame on wrong perception (R_P = 0) of failed rollouts (inferred)


@dataclass
class EvalConfig:
    every: int = 20  # evaluate every N RL steps (and at the start and end)
    n_samples: int = 8  # samples per prompt for pass@k
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])  # k values reported for pass@k
    temperature: float = 1.0  # sampling temperature for pass@k (greedy accuracy is always reported)
    sample_problems: int = 0  # pass@k / maj@k on the first N held-out problems only (0: all; greedy: always all)
    extra_verifiers: list[str] = field(default_factory=list)  # also score greedy replies with these verifiers
    # (eval/greedy_acc@<name>; e.g. ["numeric"]: the last number, a format-free accuracy)


@dataclass
class RunConfig:
    name: str = "arith-grpo"  # run folder name under out_dir
    out_dir: str = "runs"  # where runs are written
    seed: int = 0  # seeds model init, sampling and data order
    threads: int = 2  # torch CPU threads
    checkpoint_every: int = 20  # RL steps between checkpoints (0: only at the end)
    resume: bool = True  # continue from runs/<name>/checkpoint.pt if it exists
    progress: bool = True  # show a progress bar
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])  # metric sinks: jsonl | tensorboard | wandb


@dataclass
class RethinkConfig:
    """VL-Rethinker Forced Rethinking (rollout/rethink.py); defaults = the released `force_append_wait` code."""

    enabled: bool = False  # rethink after the first rollout round (rollout.rethink.forced_rethink)
    triggers: list[str] = field(default_factory=lambda: [  # the released code's four trigger strings, in order
        "\n\nWait", "\n\nWait, does it seem right?", "\n\nWait, let's double check",
        "\n\nWait, there might be a mistake",
    ])
    p_generic: float = 0.5  # P(trigger 0 or 1); otherwise trigger 2 if round 0 was correct, else trigger 3
    p_bare_wait: float = 0.4  # P(trigger 0 | generic)
    select: str = "all"  # "all": finished samples (code: force_append_wait) | "wrong": wrong ones (code: append_wait)
    easy_acc: float = 0.7  # "all": in groups with accuracy above this, incorrect samples are not rethought
    hard_acc: float = 0.6  # "wrong": only groups with accuracy at most this are rethought
    skip_prob: float = 0.35  # each selected sample is left out with this probability (the rethink rate)
    reserve_tokens: int = 1024  # only samples with <= rl.max_new_tokens - reserve_tokens tokens are rethought
    truncate_prob: float = 0.5  # P(cut the response before its last answer before the trigger); 0: never
    paragraph_sep: str = "\n\n"  # truncation backs up to the last of these ("\n" suits arith's one-line steps)
    temperature: float = 0.9  # sampling temperature of the continuation
    min_continuation: int = 30  # accept only continuations of more than this many tokens
    max_continuation: int = 1024  # accept only continuations of fewer than this many tokens
    max_per_prompt: int = 2  # most accepted rethinks per prompt group
    max_waits: int = 4  # reject when 1 + #"wait," + #"wait a" + #"alternatively" in the continuation exceeds this
    require_correct: bool = True  # accept only rethinks whose final answer is correct (the paper's selective rule)
    train_trigger: bool = True  # loss_mask = 1 on trigger tokens (the released code trains on them)
    reward_shaping: bool = False  # rethink-aware reward (code: always on): the reward term rethink_shaping
    nll_coef: float = 0.0  # auxiliary NLL on positive samples that rethink (code group_sft: 0.05)


@dataclass
class RolloutConfig:
    """The generation backend every rollout, evaluation and generating reward term goes through (rollout.backend)."""

    backend: str = "native"  # "native" (credo's KV-cached engine), "vllm" (rollout/vllm.py) or "auto" (resolve_backend)
    max_batch: int = 512  # native: rows decoded at once (the KV cache grows with the batch)
    kv_cache_gb: float | None = None  # native: the most KV cache one decode batch holds, GiB (None: 1 on a CPU,
    # no limit on a GPU; 0: no limit); fewer rows per batch when theirs would exceed it (vLLM's KV-cache budget)
    sleep: bool = False  # vllm on GPUs: release the engine's memory between rollouts (vLLM sleep mode, level 1)
    pack_weights: bool = True  # native, HF model on a CPU: decode on packed weight copies (models/packed.py)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rethink: RethinkConfig = field(default_factory=RethinkConfig)
    curiosity: CuriosityConfig = field(default_factory=CuriosityConfig)
    r3: R3Config = field(default_factory=R3Config)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


# ---- loading --------------------------------------------------------------------------------------------


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
        _, inner = typing.get_args(tp)
        return {str(k): _check_type(f"{key}.{k}", v, inner) for k, v in value.items()}
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: {value!r} does not match {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None) and value is None:
        return None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _string_value(raw: str) -> str:
    """The text of a string-typed override: `raw` as given, unless it is one quoted TOML string (`""`, `"a b"`,
    `'x'`), which is unquoted, so that `curiosity.variant=""` (quotes that reach the program, e.g. inside
    `credo ablate --variants`) sets the empty string."""
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        try:
            value = tomllib.loads(f"v = {s}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
        if isinstance(value, str):
            return value
    return raw


def _set(cfg: Any, dotted: str, value: Any, raw: str | None = None) -> None:
    *parents, leaf = dotted.split(".")
    obj = cfg
    for i, p in enumerate(parents):
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config section {'.'.join(parents[: i + 1])!r} (in {dotted!r})")
        hint = typing.get_type_hints(type(obj))[p]
        if typing.get_origin(hint) is dict:  # a key inside a table-valued field, e.g. env.options.size
            key = ".".join(parents[i + 1 :] + [leaf])
            _, inner = typing.get_args(hint)
            if inner is str and raw is not None:
                value = _string_value(raw)
            getattr(obj, p)[key] = _check_type(dotted, value, inner)
            return
        obj = getattr(obj, p)
    fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if leaf not in fields or dataclasses.is_dataclass(getattr(obj, leaf)):
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {valid}")
    hints = typing.get_type_hints(type(obj))
    if hints[leaf] is str and raw is not None:  # `run.name=nan` or `=1e3` on a string field stays text
        value = _string_value(raw)
    setattr(obj, leaf, _check_type(dotted, value, hints[leaf]))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=VALUE` with VALUE parsed as TOML (numbers, booleans, lists), else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML preset at `path`, then `key=value` overrides, each validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from e
        for k, v in _flatten(data).items():
            try:
                _set(cfg, k, v)
            except ConfigError as e:
                raise ConfigError(f"{p}: {e}") from e
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `key=value` overrides in order, then validate."""
    for item in overrides:
        key, value = parse_override(item)
        _set(cfg, key, value, raw=item.split("=", 1)[1])
    from credo.trainer.validate import validate

    return validate(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# model settings that change how the same model computes, not which model it is: free to change on resume
RESUME_COMPUTE_KEYS = frozenset({"model.dtype", "model.device", "model.gradient_checkpointing",
                                 "model.native_decode", "model.fused_layers"})


def resume_changes(saved: dict[str, Any], cfg: Config) -> tuple[list[str], list[str]]:
    """The settings of `cfg` that differ from a checkpoint's config `saved` (`to_dict` form), each as
    "key: old -> new", split into (blocking, other). Blocking: a different model or environment (`model.*` but
    `RESUME_COMPUTE_KEYS`, `env.*`), which a resumed run cannot honour (it continues the saved model on the saved
    data). Other: the rest (steps, learning rate, logging, ...), read from the resumed step on. Keys missing on
    either side (a checkpoint of an older credo) are not compared."""
    old, new = _flatten(saved), _flatten(to_dict(cfg))
    blocking, other = [], []
    for key in sorted(old.keys() & new.keys()):
        if old[key] != new[key]:
            ident = key.split(".")[0] in ("model", "env") and key not in RESUME_COMPUTE_KEYS
            (blocking if ident else other).append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return blocking, other


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    for k, v in _flatten(data).items():
        _set(cfg, k, v)
    return cfg
