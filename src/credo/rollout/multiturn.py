"""Multi-turn rollouts with tool calls: generate → parse the call → run the tool → append the observation → continue.

Pixel Reasoner (arXiv 2505.15966; OpenRLHF fork `curiosity_driven_rl`, verl-tool `pixel_reasoner`): the policy
writes a Qwen-style call and stops at `</tool_call>`,

    <tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0.5, 0.5, 1, 1], "target_image": 1}}</tool_call>

the JSON of the last `<tool_call>` block is parsed, the tool runs (`envs/tools.py::TOOLS`) on the trajectory's
context, and its observation is appended as tokens,

    \\n<observation>Here is the cropped image (Image Size: 48x48):[IMG]×n_patches</observation>\\n

(the image's ids are `image_placeholders`: a Qwen2-VL tokenizer's `<|vision_start|>…<|vision_end|>` block)

with `loss_mask = 0`, `segment_ids = observation` and log-prob 0; the policy's tokens keep `loss_mask = 1` and
their sampler log-probs (a call's tokens, from `<tool_call>` on, are labelled `tool_call`). Generation then
continues from the FULL token list, prompt + every turn so far: token-in/token-out, earlier turns are never
re-tokenised, so the trainer's recomputed log-probs equal the sampler's on every policy token. Each continuation
is a request to the run's `Generator` (`rollout.backend`) with the whole sequence as its prompt (and every image
so far, in placeholder order), so a vision policy reads observation images with no change to the backend or the
model. The tool-turn pieces (parsing, running, observation tokens, segment labels) live in `rollout.tool_turns`.

Only what the policy wrote is scored (`scored_text`): the verifier reads the policy's turns, never an observation.

Limits: at most `max_turns` generation turns per trajectory (a call in the last turn is not executed), at most
`max_images` images in a trajectory (prompt images included; the released code's `max_imgnum = 16`; a call that
would exceed it gets an error observation), and the model's `max_len` / `max_completion_tokens` (the trajectory
ends with finish reason "length"). A malformed call (no JSON object, unknown tool, bad arguments: `ToolError`,
or any exception a user tool raises) gets the observation `Execution error:\\n{message}` (the released code's
wording) and is counted; it never ends the rollout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Environment
from credo.envs.tools import TOOLS, Tool, ToolError  # noqa: F401  (ToolError: re-exported)
from credo.models.policy import Decoder
from credo.models.tokenizer import Tokenizer
from credo.rollout.backend import Completion, GenerationRequest, Generator, SamplingParams, as_generator
from credo.rollout.engine import encode_prompt
from credo.rollout.tool_turns import (  # noqa: F401  (parse_tool_call … scored_text: re-exported)
    ANSWER_MARKERS,
    CALL_END,
    CALL_START,
    DISABLED,
    OBS_END,
    OBS_START,
    TurnResult,
    call_segments,
    execute_turn,
    image_placeholders,
    observation_tokens,
    parse_tool_call,
    policy_text,
    policy_turns,
    run_tool,
    scored_text,
    strip_tool_calls,
)


@dataclass
class _Trajectory:
    example: Example
    group_id: int
    prompt_ids: list[int]
    images: list[Any]
    completion: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[float] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    n_calls: int = 0  # valid calls executed
    n_malformed: int = 0  # calls that failed: unparsable, unknown tool, bad arguments, a tool's exception
    n_refused: int = 0  # calls not executed because tools are disabled
    n_unexecuted: int = 0  # calls in the last allowed turn
    n_image_limited: int = 0
    n_turns: int = 0
    finish_reason: str = ""

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    def ids(self) -> list[int]:
        return self.prompt_ids + self.completion

    def budget(self, model_len: int | None, max_completion: int | None) -> int:
        left = [10**9]
        if model_len is not None:
            left.append(model_len - len(self.prompt_ids) - len(self.completion))
        if max_completion is not None:
            left.append(max_completion - len(self.completion))
        return min(left)

    def add(self, ids: list[int], logprobs: list[float], mask: float, segments: list[int]) -> None:
        self.completion += ids
        self.logprobs += logprobs
        self.loss_mask += [mask] * len(ids)
        self.segments += segments


def multiturn_rollout(
    generator: Generator | Decoder,
    tokenizer: Tokenizer,
    env: Environment,
    examples: list[Example],
    group_size: int,
    params: SamplingParams,
    rng: torch.Generator | None = None,
    max_turns: int = 4,
    max_images: int = 16,
    tools: dict[str, Tool] | None = None,
    first_group_id: int = 0,
    max_completion_tokens: int | None = None,
    tools_enabled: bool = True,
) -> tuple[list[Sample], dict[str, float]]:
    """`group_size` multi-turn trajectories per example (see the module docstring), all active trajectories sent to
    `generator` (the run's backend; a bare model is wrapped by `backend.as_generator`) as one call per turn, on the
    shared random stream `rng`. `params.max_new_tokens` caps each turn; `max_completion_tokens` (default: only
    the generator's `max_len`) caps all turns and observations together. Returns the samples and metrics:
    `tools/call_rate` (share of trajectories with ≥ 1 valid call), `tools/calls_per_rollout` (valid calls),
    `tools/malformed_rate` (malformed / attempted calls), `tools/malformed`, `tools/unexecuted`,
    `tools/image_limited`, `tools/refused`, `tools/turns` (mean generation turns). `Sample.n_tool_calls`
    counts valid calls, `Sample.n_tool_errors` malformed / failed ones.

    `tools_enabled = False` forbids tools (evaluation without tools): generation still stops at `</tool_call>`,
    but the call is not executed; the observation is `Execution error:\ntools are disabled\n` (counted in
    `tools/refused`, not as malformed) and the policy goes on to its next turn, so a model that habitually
    calls a tool can still answer from what it sees.
    """
    gen = as_generator(generator, tokenizer)
    tools = TOOLS if tools is None else tools
    stops = tuple(dict.fromkeys((*params.stop, CALL_END)))
    trajs = [
        _Trajectory(ex, first_group_id + i, encode_prompt(tokenizer, env, ex), list(ex.images or []))
        for i, ex in enumerate(examples) for _ in range(group_size)
    ]
    for turn in range(max_turns):
        for t in trajs:
            if not t.done and t.budget(gen.max_len, max_completion_tokens) <= 0:
                t.finish_reason = "length"
        active = [t for t in trajs if not t.done]
        if not active:
            break
        budgets = [t.budget(gen.max_len, max_completion_tokens) for t in active]
        turn_params = dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, max(budgets)),
                                          stop=stops)
        requests = [GenerationRequest(t.ids(), t.images) for t in active]
        completions = [outs[0] for outs in gen.generate(requests, turn_params, rng)]
        for t, c, budget in zip(active, completions, budgets, strict=True):
            text = _add_turn(t, c, budget, tokenizer)
            if t.done:
                continue
            if turn == max_turns - 1:
                t.n_unexecuted += 1
                t.finish_reason = "stop"
                continue
            res = execute_turn(tokenizer, text, t.images, t.example.meta, gen.image_size, tools, max_images,
                               enabled=tools_enabled)
            _add_observation(t, res, gen.max_len, max_completion_tokens)
    for t in trajs:
        t.finish_reason = t.finish_reason or "length"
    return [_sample(t, tokenizer) for t in trajs], _metrics(trajs)


def _add_turn(t: _Trajectory, c: Completion, budget: int, tokenizer: Tokenizer) -> str:
    """Append a policy turn (cut to the trajectory's token budget) and end the trajectory unless it ends in a call
    ("length" past the budget or the turn's cap, "stop" for EOS or another stop string); returns the turn's text."""
    t.n_turns += 1
    n = min(len(c.completion_ids), budget)
    ids = c.completion_ids[:n].tolist()
    text = tokenizer.decode(ids)
    t.add(ids, c.logprobs[:n].tolist(), 1.0, call_segments(tokenizer, ids, text))
    if n < len(c.completion_ids) or c.finish_reason == "length":
        t.finish_reason = "length"
    elif CALL_END not in text:  # the backend cut at EOS or another stop string: the answer turn
        t.finish_reason = "stop"
    return text


def _add_observation(t: _Trajectory, res: TurnResult, model_len: int | None, max_completion: int | None) -> None:
    """Count the call's outcome and append its observation (loss_mask 0), or end the trajectory ("length") when
    the observation and a next turn do not fit."""
    t.n_calls += int(res.valid)
    t.n_malformed += int(not res.valid and not res.refused)
    t.n_refused += int(res.refused)
    t.n_image_limited += int(res.image_limited)
    if len(res.ids) >= t.budget(model_len, max_completion):
        t.finish_reason = "length"
        return
    t.images += res.obs.images
    t.add(res.ids, [0.0] * len(res.ids), 0.0, [SEGMENTS["observation"]] * len(res.ids))


def _sample(t: _Trajectory, tokenizer: Tokenizer) -> Sample:
    """The trajectory as a `Sample`; `policy_text` holds what the verifier reads (observations left out)."""
    s = Sample(
        example_id=t.example.id,
        group_id=t.group_id,
        prompt_ids=torch.tensor(t.prompt_ids, dtype=torch.long),
        completion_ids=torch.tensor(t.completion, dtype=torch.long),
        loss_mask=torch.tensor(t.loss_mask, dtype=torch.float),
        segment_ids=torch.tensor(t.segments, dtype=torch.long),
        sampler_logprobs=torch.tensor(t.logprobs, dtype=torch.float),
        finish_reason=t.finish_reason,
        text=tokenizer.decode(t.completion),
        images=t.images or None,
        n_tool_calls=t.n_calls,
        n_tool_errors=t.n_malformed,
    )
    s.policy_text = policy_text(s, tokenizer)
    return s


def _metrics(trajs: list[_Trajectory]) -> dict[str, float]:
    """The `tools/` metrics of a rollout (see `multiturn_rollout`)."""
    B = max(1, len(trajs))
    attempted = sum(t.n_calls + t.n_malformed for t in trajs)
    return {
        "tools/call_rate": sum(t.n_calls > 0 for t in trajs) / B,
        "tools/calls_per_rollout": sum(t.n_calls for t in trajs) / B,
        "tools/malformed_rate": sum(t.n_malformed for t in trajs) / max(1, attempted),
        "tools/malformed": float(sum(t.n_malformed for t in trajs)),
        "tools/unexecuted": float(sum(t.n_unexecuted for t in trajs)),
        "tools/image_limited": float(sum(t.n_image_limited for t in trajs)),
        "tools/refused": float(sum(t.n_refused for t in trajs)),
        "tools/turns": sum(t.n_turns for t in trajs) / B,
    }


def check_turns(turns: list[str]) -> None:
    """Reference turns as a rollout would cut them: every turn but the last ends with its only `</tool_call>`
    (generation stops there), the last holds none (it is the answer turn, ended by EOS)."""
    if not turns or not all(isinstance(x, str) for x in turns):
        raise ValueError(f"reference turns must be a non-empty list of strings, got {turns!r}")
    for k, turn in enumerate(turns[:-1]):
        if not turn.endswith(CALL_END) or turn.count(CALL_END) != 1:
            raise ValueError(f"reference turn {k} must end with its only {CALL_END}: {turn!r}")
    if CALL_END in turns[-1]:
        raise ValueError(f"the last reference turn must not call a tool: {turns[-1]!r}")


def reference_trajectory(
    tokenizer: Tokenizer,
    env: Environment,
    example: Example,
    turns: list[str],
    tools: dict[str, Tool] | None = None,
    image_size: int = 48,
    max_images: int = 16,
) -> Sample:
    """The trajectory a multi-turn rollout produces when the policy writes exactly `turns` (policy text
    segments, e.g. `env.reference_turns(example)`): prompt, then per turn its tokens (`loss_mask` 1, segments
    by `call_segments`) and, after a turn that ends in a call, the REAL tool's observation from `execute_turn`
    (`loss_mask` 0, segment `observation`, its images appended to the row's), and EOS after the last turn.
    Multi-turn SFT trains on these rows. Each turn is encoded on its own, as the rollout samples it; for a BPE
    tokenizer that is the policy's canonical spelling of the turn. `sampler_logprobs` are 0 (no sampler)."""
    check_turns(turns)
    tools = TOOLS if tools is None else tools
    t = _Trajectory(example, 0, encode_prompt(tokenizer, env, example), list(example.images or []))
    for k, turn in enumerate(turns):
        ids = tokenizer.encode(turn)
        if k == len(turns) - 1:
            ids = ids + [tokenizer.eos_ids[0]]
        t.add(ids, [0.0] * len(ids), 1.0, call_segments(tokenizer, ids, turn))
        t.n_turns += 1
        if k < len(turns) - 1:
            res = execute_turn(tokenizer, turn, t.images, example.meta, image_size, tools, max_images)
            t.n_calls += int(res.valid)
            t.n_malformed += int(not res.valid)
            t.images += res.obs.images
            t.add(res.ids, [0.0] * len(res.ids), 0.0, [SEGMENTS["observation"]] * len(res.ids))
    return Sample(
        example_id=example.id, group_id=0,
        prompt_ids=torch.tensor(t.prompt_ids, dtype=torch.long),
        completion_ids=torch.tensor(t.completion, dtype=torch.long),
        loss_mask=torch.tensor(t.loss_mask, dtype=torch.float),
        segment_ids=torch.tensor(t.segments, dtype=torch.long),
        sampler_logprobs=torch.tensor(t.logprobs, dtype=torch.float),
        finish_reason="stop", text=tokenizer.decode(t.completion), images=t.images or None,
        n_tool_calls=t.n_calls, n_tool_errors=t.n_malformed,
    )


def tool_use_metrics(samples: list[Sample]) -> dict[str, float]:
    """After scoring: accuracy of the trajectories with ≥ 1 valid tool call and of those without (the issue's
    "accuracy with and without tool use"), from `Sample.correct` (the verifier's verdict), and their shares.
    A group that is empty reports accuracy 0 and share 0."""
    def acc(group: list[Sample]) -> float:
        return sum(s.correct for s in group) / max(1, len(group))

    used = [s for s in samples if s.n_tool_calls > 0]
    unused = [s for s in samples if s.n_tool_calls == 0]
    n = max(1, len(samples))
    return {
        "tools/acc_with_tools": acc(used),
        "tools/acc_without_tools": acc(unused),
        "tools/share_with_tools": len(used) / n,
    }
