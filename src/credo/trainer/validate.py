"""Config validation: registry names, ranges and combinations that types alone cannot check."""

from __future__ import annotations

from credo.trainer.config import Config, ConfigError


def validate(cfg: Config) -> Config:
    """Check values that types alone cannot: registry names and ranges. Raises ConfigError naming the key."""
    _check_names_and_ranges(cfg)
    _check_methods(cfg)
    _check_model_and_run(cfg)
    _check_judge(cfg)
    _check_inputs(cfg)
    return cfg


def _check_names_and_ranges(cfg: Config) -> None:
    from credo.core import ADVANTAGES, AGGREGATIONS, CREDIT, KL_ESTIMATORS, LOSSES, SELECTION
    from credo.rollout.backend import BACKENDS

    choices = {
        "rollout.backend": (cfg.rollout.backend, {*BACKENDS, "auto"}),
        "rl.advantage": (cfg.rl.advantage, ADVANTAGES),
        "rl.loss": (cfg.rl.loss, LOSSES),
        "rl.aggregation": (cfg.rl.aggregation, AGGREGATIONS),
        "rl.credit": (cfg.rl.credit, CREDIT),
        "rl.selection": (cfg.rl.selection, SELECTION),
        "rl.kl_estimator": (cfg.rl.kl_estimator, KL_ESTIMATORS),
    }
    for key, (value, table) in choices.items():
        if value not in table:
            raise ConfigError(f"config key {key!r}: unknown value {value!r}; choose one of {sorted(table)}")
    positive = {
        "rl.steps": cfg.rl.steps, "rl.prompts_per_step": cfg.rl.prompts_per_step, "rl.group_size": cfg.rl.group_size,
        "rl.max_new_tokens": cfg.rl.max_new_tokens, "rl.ppo_epochs": cfg.rl.ppo_epochs,
        "rl.minibatches": cfg.rl.minibatches, "sft.batch_size": cfg.sft.batch_size, "eval.every": cfg.eval.every,
        "model.d_model": cfg.model.d_model, "model.n_layers": cfg.model.n_layers, "model.n_heads": cfg.model.n_heads,
        "run.threads": cfg.run.threads, "rollout.max_batch": cfg.rollout.max_batch,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r}: must be >= 1, got {value}")
    for key, value in {"rl.lr": cfg.rl.lr, "sft.lr": cfg.sft.lr, "rl.kl_coef": cfg.rl.kl_coef,
                       "rl.temperature": cfg.rl.temperature, "sft.steps": cfg.sft.steps,
                       "eval.sample_problems": cfg.eval.sample_problems,
                       "rollout.kv_cache_gb": cfg.rollout.kv_cache_gb or 0.0}.items():
        if value < 0:
            raise ConfigError(f"config key {key!r}: must be >= 0, got {value}")
    for key, value in {"rl.ssr_alpha": cfg.rl.ssr_alpha, "rl.ssr_eps": cfg.rl.ssr_eps,
                       "rl.ssr_buffer": cfg.rl.ssr_buffer, "rl.dynamic_max_rounds": cfg.rl.dynamic_max_rounds,
                       "rl.overlong_cache": cfg.rl.overlong_cache, "rl.tis_cap": cfg.rl.tis_cap}.items():
        if value < 0:
            raise ConfigError(f"config key {key!r}: must be >= 0, got {value}")


def _check_methods(cfg: Config) -> None:
    if cfg.rl.ssr_batch_frac <= 0:
        raise ConfigError(f"config key 'rl.ssr_batch_frac': must be > 0, got {cfg.rl.ssr_batch_frac}")
    if cfg.rl.overlong_cache > cfg.rl.max_new_tokens:
        raise ConfigError(f"config key 'rl.overlong_cache'={cfg.rl.overlong_cache}: must be <= rl.max_new_tokens "
                          f"({cfg.rl.max_new_tokens})")
    if cfg.rl.ssr and (cfg.rl.selection != "all" or cfg.rl.dynamic_sampling):
        raise ConfigError("config key 'rl.ssr': SSR does its own selection; it needs rl.selection = \"all\" "
                          "and rl.dynamic_sampling = false")
    if cfg.rl.clip_ratio_c and cfg.rl.clip_ratio_c <= 1:
        raise ConfigError(f"config key 'rl.clip_ratio_c': must be > 1 (0 = off), got {cfg.rl.clip_ratio_c}")
    if not 0 < cfg.rl.top_p <= 1:
        raise ConfigError(f"config key 'rl.top_p': must be in (0, 1], got {cfg.rl.top_p}")
    if cfg.reward.workers < 0 or cfg.reward.timeout_s <= 0:
        raise ConfigError(f"config keys 'reward.workers' (>= 0) / 'reward.timeout_s' (> 0): got "
                          f"{cfg.reward.workers} / {cfg.reward.timeout_s}")
    if cfg.reward.function and ":" not in cfg.reward.function:
        raise ConfigError(f"config key 'reward.function': {cfg.reward.function!r} is not an import path "
                          "'package.module:function'")
    if cfg.sft.source not in ("reference", "self"):
        raise ConfigError(f"config key 'sft.source': unknown value {cfg.sft.source!r}; choose reference or self")
    if cfg.sft.self_samples < 1 or cfg.sft.self_max_new_tokens < 1:
        raise ConfigError("config keys 'sft.self_samples' / 'sft.self_max_new_tokens': must be >= 1")
    if cfg.rethink.select not in ("all", "wrong"):
        raise ConfigError(f"config key 'rethink.select': unknown value {cfg.rethink.select!r}; choose all or wrong")
    for key in ("p_generic", "p_bare_wait", "skip_prob", "truncate_prob", "easy_acc", "hard_acc"):
        if not 0 <= getattr(cfg.rethink, key) <= 1:
            raise ConfigError(f"config key 'rethink.{key}': must be in [0, 1], got {getattr(cfg.rethink, key)}")
    if cfg.curiosity.variant not in ("", "paper", "code"):
        raise ConfigError(f"config key 'curiosity.variant': unknown value {cfg.curiosity.variant!r}; choose "
                          "\"\" (off), paper or code")
    if cfg.curiosity.variant and not cfg.rl.multiturn:
        raise ConfigError("config key 'curiosity.variant': the curiosity bonus needs rl.multiturn = true")
    from credo.envs.tools import TOOLS

    unknown = [t for t in cfg.rl.tools if t not in TOOLS]
    if unknown:
        raise ConfigError(f"config key 'rl.tools': unknown tools {unknown}; registered: {sorted(TOOLS)}")
    if cfg.rl.credit == "moca" and cfg.reward.perception <= 0:
        raise ConfigError("config key 'rl.credit' = \"moca\" routes credit by R_P: it needs reward.perception > 0")
    reasoner = cfg.reward.perception_reasoner
    if reasoner not in ("program", "policy") and not reasoner.startswith("model:"):
        raise ConfigError(f"config key 'reward.perception_reasoner': unknown value {reasoner!r}; choose program, "
                          "policy or model:<path>")
    if cfg.reward.perception_reasoner_tokens < 1:
        raise ConfigError("config key 'reward.perception_reasoner_tokens': must be >= 1, got "
                          f"{cfg.reward.perception_reasoner_tokens}")
    if cfg.rl.credit == "hicra" and not cfg.rl.hicra_ngram:
        raise ConfigError("config key 'rl.hicra_ngram': HICRA needs at least one gram length")


def _check_model_and_run(cfg: Config) -> None:
    if cfg.model.kind not in ("tinylm", "tinyvlm"):
        raise ConfigError(f"config key 'model.kind': unknown value {cfg.model.kind!r}; choose tinylm or tinyvlm")
    if cfg.model.kind == "tinyvlm" and (cfg.model.patch_size < 1 or cfg.model.image_size % cfg.model.patch_size):
        raise ConfigError(f"config keys 'model.image_size'={cfg.model.image_size} and 'model.patch_size'="
                          f"{cfg.model.patch_size}: the image side must be a multiple of the patch side")
    from credo.trainer.metrics import LOGGERS

    if unknown := [x for x in cfg.run.loggers if x not in LOGGERS]:
        raise ConfigError(f"config key 'run.loggers': unknown {unknown}; choose from {list(LOGGERS)}")
    lora = cfg.model.lora
    if lora.rank < 0 or (lora.rank > 0 and (lora.alpha <= 0 or not 0 <= lora.dropout < 1 or not cfg.model.path)):
        raise ConfigError(f"config keys 'model.lora.*': rank >= 0 (0 = off); with rank > 0, alpha > 0, dropout in "
                          f"[0, 1) and a Hugging Face model.path; got rank={lora.rank}, alpha={lora.alpha}, "
                          f"dropout={lora.dropout}, model.path={cfg.model.path!r}")
    if cfg.env.max_prompt_tokens < 0:
        raise ConfigError(f"config key 'env.max_prompt_tokens': must be >= 0, got {cfg.env.max_prompt_tokens}")
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError(f"config keys 'model.d_model'={cfg.model.d_model} and 'model.n_heads'="
                          f"{cfg.model.n_heads}: d_model must be divisible by n_heads")
    from credo.envs.verifiers import VERIFIERS

    if bad := [v for v in cfg.eval.extra_verifiers if v not in VERIFIERS and ":" not in v]:
        raise ConfigError(f"config key 'eval.extra_verifiers': unknown {bad}; choose from {sorted(VERIFIERS)} or "
                          "an import path 'module:function'")


def _check_judge(cfg: Config) -> None:
    """The `[judge]` section: a valid rubric and reward formula, positive sizes, the group filter's thresholds, and
    a judge model when the judge reward is on."""
    from credo.rewards.judgement import REWARD_FORMULAS, Rubric

    j = cfg.judge
    try:
        Rubric(tuple(j.dimensions), j.scale_min, j.scale_max, tuple(j.na_dimensions))
    except ValueError as e:
        raise ConfigError(f"config section 'judge': {e}") from e
    if j.reward not in REWARD_FORMULAS:
        raise ConfigError(f"config key 'judge.reward': unknown value {j.reward!r}; choose one of {REWARD_FORMULAS}")
    if bad := [d for d in j.reward_dimensions if d.lower() not in {x.lower() for x in j.dimensions}]:
        raise ConfigError(f"config key 'judge.reward_dimensions': {bad} are not in judge.dimensions")
    if j.readout not in ("text", "probs"):
        raise ConfigError(f"config key 'judge.readout': unknown value {j.readout!r}; choose one of ('text', 'probs')")
    if not 0 <= j.min_score_mass <= 1:
        raise ConfigError(f"config key 'judge.min_score_mass': must be in [0, 1], got {j.min_score_mass}")
    for key in ("max_new_tokens", "batch_size", "cache_size", "line_tokens"):
        if getattr(j, key) < 1:
            raise ConfigError(f"config key 'judge.{key}': must be >= 1, got {getattr(j, key)}")
    if j.temperature < 0 or j.refine_temperature < 0 or j.refine_rounds < 0 or j.group_min_std < 0:
        raise ConfigError("config keys 'judge.temperature', 'judge.refine_temperature', 'judge.refine_rounds', "
                          "'judge.group_min_std': must be >= 0")
    if cfg.reward.judge != 0 and not (j.model or cfg.model.path):
        raise ConfigError("config key 'reward.judge': the judge reward needs a judge model (judge.model or "
                          "model.path)")


OWN_VERIFIER_ENVS = frozenset({"arith", "zoom", "frames", "scenes"})  # built-in sandboxes that ignore env.verifier


def _check_inputs(cfg: Config) -> None:
    """Names resolved later (environment, verifier, dtype), sizes, and settings under which nothing can train
    (TRL refuses fewer than 2 generations per prompt too), checked before anything is loaded or written."""
    from credo.envs import ENVS
    from credo.envs.verifiers import VERIFIERS
    from credo.models.hf import DTYPES

    name = cfg.env.name
    if name not in ENVS and name.split(":", 1)[0] not in ENVS and ":" not in name:
        raise ConfigError(f"config key 'env.name': unknown value {name!r}; choose one of {sorted(ENVS)} or an import "
                          "path 'module:factory'")
    if cfg.env.verifier and name in OWN_VERIFIER_ENVS:
        raise ConfigError(f"config key 'env.verifier': the {name!r} sandbox checks answers with its own verifier; "
                          "env.verifier applies to env.name='dataset' and 'reasoning_gym:<task>' (a per-item "
                          "reward.function replaces any env's verifier)")
    if cfg.env.verifier and cfg.env.verifier not in VERIFIERS and ":" not in cfg.env.verifier:
        raise ConfigError(f"config key 'env.verifier': unknown value {cfg.env.verifier!r}; choose one of "
                          f"{sorted(VERIFIERS)} or an import path 'module:function'")
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"config key 'model.dtype': unknown value {cfg.model.dtype!r}; choose one of "
                          f"{sorted(DTYPES)}")
    for key, n in {"env.n_train": cfg.env.n_train, "env.n_test": cfg.env.n_test}.items():
        if n < 0 or (n == 0 and name != "dataset"):
            raise ConfigError(f"config key {key!r}: must be >= 1 (0, all rows, only for env.name='dataset'), got {n}")
    if cfg.rl.group_size < 2:
        raise ConfigError(f"config key 'rl.group_size': must be >= 2, got {cfg.rl.group_size} (group-relative "
                          "advantages of one sample are 0: nothing would train)")
    if not (0 <= cfg.rl.eps_low < 1 and cfg.rl.eps_high >= 0):
        raise ConfigError(f"config keys 'rl.eps_low'={cfg.rl.eps_low}, 'rl.eps_high'={cfg.rl.eps_high}: the PPO "
                          "clip range needs 0 <= eps_low < 1 and eps_high >= 0")
    if not cfg.run.name.strip() or "/" in cfg.run.name or cfg.run.name in (".", ".."):
        raise ConfigError(f"config key 'run.name': {cfg.run.name!r} must name one folder under run.out_dir")
    if cfg.eval.n_samples > 0 and (bad := [k for k in cfg.eval.pass_k if not 1 <= k <= cfg.eval.n_samples]):
        raise ConfigError(f"config key 'eval.pass_k': {bad} outside 1..eval.n_samples={cfg.eval.n_samples}")
