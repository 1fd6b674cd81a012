"""One tool turn of a multi-turn rollout: parse the call a policy turn ends with, run the tool, format its
observation as tokens (`execute_turn`), and label the turn's tokens (`call_segments`); and what a verifier reads of
a trajectory with tool turns (`scored_text`: only what the policy wrote, issue 12 kind 4).

The call format (Pixel Reasoner, Qwen style) and the observation block are described in `rollout.multiturn`, which
drives these pieces; the multi-turn SFT builder (`multiturn.reference_trajectory`) uses the same `execute_turn`, so
rollouts and SFT rows agree token for token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from credo.data import SEGMENTS, Sample
from credo.envs.tools import Observation, Tool, ToolContext, ToolError
from credo.models.tokenizer import Tokenizer

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


def image_placeholders(tokenizer: Tokenizer, n_images: int) -> list[int]:
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


def observation_tokens(tokenizer: Tokenizer, obs: Observation) -> list[int]:
    """`\\n<observation>{text}{image placeholders}</observation>\\n` as token ids (no BOS)."""
    return tokenizer.encode(OBS_START + obs.text) + image_placeholders(tokenizer, len(obs.images)) + \
        tokenizer.encode(OBS_END)


def call_segments(tokenizer: Tokenizer, ids: list[int], text: str) -> list[int]:
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
    tokenizer: Tokenizer,
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


# ---- what the verifier reads (issue 12, kind 4) ------------------------------------------------------------

ANSWER_MARKERS = ("<answer>", "\\boxed")  # a tagged answer: the answer tag, or a boxed answer (math)
_CALL_BLOCK = re.compile(re.escape(CALL_START) + r".*?(?:" + re.escape(CALL_END) + r"|\Z)", re.DOTALL)


def policy_turns(sample: Sample, tokenizer: Tokenizer) -> list[str]:
    """The decoded text of each maximal run of completion tokens not labelled `observation`, in order: the policy's
    turns of a multi-turn trajectory (one turn for a single-turn sample)."""
    runs: list[list[int]] = [[]]
    for tok, seg in zip(sample.completion_ids.tolist(), sample.segment_ids.tolist(), strict=True):
        if seg == SEGMENTS["observation"]:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(tok)
    return [tokenizer.decode(r) for r in runs if r]


def strip_tool_calls(text: str) -> str:
    """`text` without its `<tool_call>…</tool_call>` blocks (an unclosed one runs to the end).

    >>> strip_tool_calls('so <tool_call>{"name": "calculator", "arguments": {"expression": "17*23"}}</tool_call> hm')
    'so  hm'
    """
    return _CALL_BLOCK.sub("", text)


def scored_text(sample: Sample, tokenizer: Tokenizer) -> str:
    """The text the verifier reads: only what the policy wrote (DESIGN.md, reliability; issue 12, kind 4).

    A sample without observations is scored on its whole `text`. With observations (a multi-turn trajectory that
    called a tool): when a policy turn holds a tagged answer (`ANSWER_MARKERS`), the policy turns joined by newlines,
    observations removed, so an answer tag inside an observation is never read; otherwise the last policy turn with
    its tool-call blocks removed, so neither an observation's numbers nor a call's arguments (`17*23`) are read as
    an untagged answer.
    """
    if not bool((sample.segment_ids == SEGMENTS["observation"]).any()):
        return sample.text
    turns = policy_turns(sample, tokenizer)
    if any(m in t for t in turns for m in ANSWER_MARKERS):
        return "\n".join(turns)
    return strip_tool_calls(turns[-1]) if turns else ""


def policy_text(sample: Sample, tokenizer: Tokenizer) -> str | None:
    """What a rollout stores in `Sample.policy_text` (read by `Sample.scored_text`, the verifier's input):
    `scored_text` when the completion holds observations, None otherwise (the verifier then reads `text`)."""
    if not bool((sample.segment_ids == SEGMENTS["observation"]).any()):
        return None
    return scored_text(sample, tokenizer)
