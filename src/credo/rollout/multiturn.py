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
is a fresh prefill of the whole sequence (with every image so far, in placeholder order), so a vision policy
reads observation images with no change to the sampler or the model.

Limits: at most `max_turns` generation turns per trajectory (a call in the last turn is not executed), at most
`max_images` images in a trajectory (prompt images included; the released code's `max_imgnum = 16`; a call that
would exceed it gets an error observation), and the model's `max_len` / `max_completion_tokens` (the trajectory
ends with finish reason "length"). A malformed call (no JSON object, unknown tool, bad arguments: `ToolError`,
or any exception a user tool raises) gets the observation `Execution error:\\n{message}` (the released code's
wording) and is counted; it never ends the rollout.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from credo.data import SEGMENTS, Example, Sample
from credo.envs.base import Environment
from credo.envs.tools import TOOLS, Observation, Tool, ToolContext, ToolError
from credo.models.policy import Policy
from credo.rollout.engine import encode_prompt
from credo.rollout.sampler import SamplingParams, cut_at_stop_text, generate

CALL_START, CALL_END = "<tool_call>", "</tool_call>"
OBS_START, OBS_END = "\n<observation>", "</observation>\n"


def parse_tool_call(text: str, call_start: str = CALL_START, call_end: str = CALL_END) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of the last `<tool_call>…</tool_call>` block of `text`; `ToolError` when malformed.

    >>> parse_tool_call('x <tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>')
    ('calculator', {'expression': '1+2'})
    """
    end = text.rfind(call_end)
    start = text.rfind(call_start, 0, max(end, 0))
    if end < 0 or start < 0:
        raise ToolError(f"no {call_start}...{call_end} block")
    body = text[start + len(call_start) : end].strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise ToolError(f"invalid JSON in the tool call: {e.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolError('the tool call must be a JSON object {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ToolError("arguments must be a JSON object") from None
    if not isinstance(args, dict):
        raise ToolError("arguments must be a JSON object")
    return obj["name"], args


def run_tool(text: str, ctx: ToolContext, tools: dict[str, Tool]) -> tuple[Observation, bool]:
    """Parse the call at the end of `text` and run it: (observation, valid). Never raises: a malformed call or a
    failing tool gives an error observation and `valid = False`."""
    try:
        name, args = parse_tool_call(text)
        if name not in tools:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(tools))}")
        obs = tools[name](args, ctx)
        if not isinstance(obs, Observation):
            raise ToolError(f"tool {name!r} returned {type(obs).__name__}, not an Observation")
        return obs, True
    except ToolError as e:
        return Observation(f"Execution error:\n{e}\n"), False
    except Exception as e:  # a user tool's bug must not end the rollout
        return Observation(f"Execution error:\n{type(e).__name__}: {e}\n"), False


def image_placeholders(tokenizer: Any, n_images: int) -> list[int]:
    """The placeholder ids of `n_images` images, to append anywhere in a sequence (`VLMTokenizer.with_images`
    puts the prompt's after BOS; an observation's go inside its `<observation>` block). The model fills the
    placeholders in order with the row's images, so `Sample.images` lists them in placeholder order.

    A tokenizer with `image_block(n)` (the Qwen2-VL one, `models/hf_vlm.py::HFVLMTokenizer`) gives the ids its
    model expects per image, `<|vision_start|><|image_pad|>×n<|vision_end|>`, as in its prompts; otherwise (the
    TinyVLM's char tokenizer) `image_token_id × n_patches` per image."""
    if not n_images:
        return []
    if not hasattr(tokenizer, "image_token_id"):
        raise ToolError("the tool returned images but this model reads no images")
    block = getattr(tokenizer, "image_block", None)
    if callable(block):
        return list(block(n_images))
    return [tokenizer.image_token_id] * (tokenizer.n_patches * n_images)


def observation_tokens(tokenizer: Any, obs: Observation) -> list[int]:
    """`\\n<observation>{text}{image placeholders}</observation>\\n` as token ids (no BOS)."""
    return tokenizer.encode(OBS_START + obs.text) + image_placeholders(tokenizer, len(obs.images)) + \
        tokenizer.encode(OBS_END)


def call_segments(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """Segment labels of one policy turn: `tool_call` on the tokens from its last `<tool_call>` on (a token
    belongs to it when its text ends after the tag starts), `reasoning` elsewhere. Character offsets are the
    cumulative decoded lengths of the sampled ids (exact for the char tokenizer, close for BPE)."""
    seg = [SEGMENTS["reasoning"]] * len(ids)
    start = text.rfind(CALL_START)
    if start < 0:
        return seg
    for k in range(len(ids)):
        if len(tokenizer.decode(ids[: k + 1])) > start:
            seg[k:] = [SEGMENTS["tool_call"]] * (len(ids) - k)
            break
    return seg


DISABLED = "tools are disabled"


@dataclass
class TurnResult:
    """What follows a policy turn that ended in a call: the observation, its tokens, and how the call went."""

    obs: Observation
    ids: list[int]  # the observation's token ids (`observation_tokens`), appended with loss_mask 0
    valid: bool  # the tool ran (an image-limited call stays valid, as in the rollout's counts)
    refused: bool = False  # tools disabled: the call was not executed
    image_limited: bool = False


def execute_turn(
    tokenizer: Any,
    text: str,
    images: list[Any],
    meta: dict[str, Any],
    image_size: int,
    tools: dict[str, Tool],
    max_images: int = 16,
    enabled: bool = True,
) -> TurnResult:
    """Run the call at the end of the policy turn `text` on a `ToolContext(images, meta, image_size)` and format
    its observation as tokens. The one place where a call becomes observation tokens: the rollout and the
    multi-turn SFT builder (`reference_trajectory`) both use it, so their sequences agree token for token.

    A call whose images would take the trajectory past `max_images` gets an error observation (still counted
    as valid); a tool that returns images to a model that reads none gets an error (invalid). With
    `enabled = False` (tools forbidden) the call is not executed: the observation is
    `Execution error:\ntools are disabled\n` and the policy continues, so it can still answer without tools."""
    if not enabled:
        obs = Observation(f"Execution error:\n{DISABLED}\n")
        return TurnResult(obs, observation_tokens(tokenizer, obs), False, refused=True)
    obs, valid = run_tool(text, ToolContext(images=list(images), meta=meta, image_size=image_size), tools)
    limited = valid and len(images) + len(obs.images) > max_images
    if limited:
        obs = Observation(f"Execution error:\nimage limit reached ({max_images} images)\n")
    try:
        ids = observation_tokens(tokenizer, obs)
    except ToolError as e:
        obs, valid = Observation(f"Execution error:\n{e}\n"), False
        ids = observation_tokens(tokenizer, obs)
    return TurnResult(obs, ids, valid, image_limited=limited)


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
    policy: Policy,
    tokenizer: Any,
    env: Environment,
    examples: list[Example],
    group_size: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    max_turns: int = 4,
    max_images: int = 16,
    tools: dict[str, Tool] | None = None,
    first_group_id: int = 0,
    max_completion_tokens: int | None = None,
    max_batch: int = 512,
    tools_enabled: bool = True,
) -> tuple[list[Sample], dict[str, float]]:
    """`group_size` multi-turn trajectories per example (see the module docstring), batched across all active
    trajectories at every turn. `params.max_new_tokens` caps each turn; `max_completion_tokens` (default: only
    the model's `max_len`) caps all turns and observations together. Returns the samples and metrics:
    `tools/call_rate` (share of trajectories with ≥ 1 valid call), `tools/calls_per_rollout` (valid calls),
    `tools/malformed_rate` (malformed / attempted calls), `tools/malformed`, `tools/unexecuted`,
    `tools/image_limited`, `tools/refused`, `tools/turns` (mean generation turns). `Sample.n_tool_calls`
    counts valid calls, `Sample.n_tool_errors` malformed / failed ones.

    `tools_enabled = False` forbids tools (evaluation without tools): generation still stops at `</tool_call>`,
    but the call is not executed; the observation is `Execution error:\ntools are disabled\n` (counted in
    `tools/refused`, not as malformed) and the policy goes on to its next turn, so a model that habitually
    calls a tool can still answer from what it sees.
    """
    tools = TOOLS if tools is None else tools
    stops = tuple(dict.fromkeys((*params.stop, CALL_END)))
    stop_ids = [tokenizer.encode(s) for s in stops]
    eos_ids = getattr(tokenizer, "eos_ids", tokenizer.eos_id)
    eos_set = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    cfg = getattr(policy, "cfg", None)
    model_len, image_size = getattr(cfg, "max_len", None), getattr(cfg, "image_size", 48)

    trajs = [
        _Trajectory(ex, first_group_id + i, encode_prompt(tokenizer, env, ex), list(ex.images or []))
        for i, ex in enumerate(examples) for _ in range(group_size)
    ]
    for turn in range(max_turns):
        for t in trajs:
            if not t.done and t.budget(model_len, max_completion_tokens) <= 0:
                t.finish_reason = "length"
        active = [t for t in trajs if not t.done]
        if not active:
            break
        budgets = [t.budget(model_len, max_completion_tokens) for t in active]
        turn_params = dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, max(budgets)),
                                          stop=stops)
        completions = []
        for i in range(0, len(active), max_batch):
            chunk = active[i : i + max_batch]
            imgs = [t.images for t in chunk] if any(t.images for t in chunk) else None
            completions += generate(policy, [t.ids() for t in chunk], turn_params, eos_ids, tokenizer.pad_id,
                                    stop_ids, generator, imgs)
        completions = [cut_at_stop_text(c, tokenizer.decode, stops) for c in completions]
        for t, c, budget in zip(active, completions, budgets, strict=True):
            t.n_turns += 1
            n = min(len(c.completion_ids), budget)
            ids = c.completion_ids[:n].tolist()
            text = tokenizer.decode(ids)
            t.add(ids, c.logprobs[:n].tolist(), 1.0, call_segments(tokenizer, ids, text))
            if n < len(c.completion_ids) or c.finish_reason == "length":
                t.finish_reason = "length"
                continue
            if (ids and ids[-1] in eos_set) or CALL_END not in text:
                t.finish_reason = "stop"  # EOS or another stop string: the answer turn
                continue
            if turn == max_turns - 1:
                t.n_unexecuted += 1
                t.finish_reason = "stop"
                continue
            res = execute_turn(tokenizer, text, t.images, t.example.meta, image_size, tools, max_images,
                               enabled=tools_enabled)
            t.n_calls += int(res.valid)
            t.n_malformed += int(not res.valid and not res.refused)
            t.n_refused += int(res.refused)
            t.n_image_limited += int(res.image_limited)
            if len(res.ids) >= t.budget(model_len, max_completion_tokens):
                t.finish_reason = "length"  # no room for the observation and a next turn
                continue
            t.images += res.obs.images
            t.add(res.ids, [0.0] * len(res.ids), 0.0, [SEGMENTS["observation"]] * len(res.ids))
    for t in trajs:
        t.finish_reason = t.finish_reason or "length"

    samples = [
        Sample(
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
        for t in trajs
    ]
    B = max(1, len(trajs))
    attempted = sum(t.n_calls + t.n_malformed for t in trajs)
    metrics = {
        "tools/call_rate": sum(t.n_calls > 0 for t in trajs) / B,
        "tools/calls_per_rollout": sum(t.n_calls for t in trajs) / B,
        "tools/malformed_rate": sum(t.n_malformed for t in trajs) / max(1, attempted),
        "tools/malformed": float(sum(t.n_malformed for t in trajs)),
        "tools/unexecuted": float(sum(t.n_unexecuted for t in trajs)),
        "tools/image_limited": float(sum(t.n_image_limited for t in trajs)),
        "tools/refused": float(sum(t.n_refused for t in trajs)),
        "tools/turns": sum(t.n_turns for t in trajs) / B,
    }
    return samples, metrics


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
    tokenizer: Any,
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
            ids = ids + [tokenizer.eos_id]
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


def tool_use_metrics(samples: list[Sample], correct_key: str = "outcome") -> dict[str, float]:
    """After scoring: accuracy of the trajectories with ≥ 1 valid tool call and of those without (the issue's
    "accuracy with and without tool use"), from `reward_parts[correct_key]` (else the reward), and their shares.
    A group that is empty reports accuracy 0 and share 0."""
    def acc(group: list[Sample]) -> float:
        return sum(s.reward_parts.get(correct_key, s.reward) for s in group) / max(1, len(group))

    used = [s for s in samples if s.n_tool_calls > 0]
    unused = [s for s in samples if s.n_tool_calls == 0]
    n = max(1, len(samples))
    return {
        "tools/acc_with_tools": acc(used),
        "tools/acc_without_tools": acc(unused),
        "tools/share_with_tools": len(used) / n,
    }
