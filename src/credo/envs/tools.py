"""Tools a policy can call inside its reasoning, and the registry `TOOLS` the multi-turn rollout looks them up in.

Pixel Reasoner (arXiv 2505.15966; verl-tool `servers/tools/pixel_reasoner.py`) gives the model two visual
operations, `crop_image` and `select_frames`; `calculator` is a text tool (the loop is not vision-specific).

A registry entry has one signature, `tool(arguments: dict, ctx: ToolContext) -> Observation`: `arguments` is the
JSON object of the call, `ctx` the trajectory's context (its images so far, the example's `meta`, the model's
input size). Bad arguments raise `ToolError(message)`; the rollout turns the message into an error observation.
Users extend the registry with `register_tool(name, fn)`.

The pure functions under the adapters (`crop`, `select_frames`, `calculator`) take plain values and are usable on
their own.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


class ToolError(Exception):
    """A tool call with bad arguments; its message is shown to the policy as the observation."""


@dataclass
class Observation:
    """What a tool returns: text and/or images (shown to the policy in this order: text, then the images)."""

    text: str = ""
    images: list[Any] = field(default_factory=list)


@dataclass
class ToolContext:
    """What a tool may read: the trajectory's images so far (the prompt's first, then those earlier tools
    returned; `target_image` indexes them from 1), the example's `meta` (e.g. `meta["frames"]` for
    `select_frames`), and the model's input size (crops and frames are resampled to it)."""

    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    image_size: int = 48
    max_frames: int = 8


Tool = Callable[[dict[str, Any], ToolContext], Observation]


def to_pil(image: Any) -> Image.Image:
    """A PIL RGB image from PIL, or an (H, W, C) uint8 / float-in-[0, 1] array or tensor."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float32)
        arr = (arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr).clip(0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3]).convert("RGB")


# ---- pure tools ----------------------------------------------------------------------------------------------


def crop(image: Any, bbox: list[float], size: int, min_size: int = 4, pad: float = 0.1) -> Image.Image:
    """The region `bbox = [x1, y1, x2, y2]` of `image`, padded and resampled to `size` × `size` (PIL).

    Coordinates: relative in [0, 1] when every value is ≤ 1, else pixels (the released code's rule
    `CropImageNormalized.call`; a pixel box inside the top-left 1×1 pixel is meaningless anyway). Each side is
    padded by `pad` (relative, OpenRLHF p = 0.1) and clipped to the image. Departure: the code asserts a crop
    larger than 28 px; here a box smaller than `min_size` pixels is grown around its centre instead (the tiny
    sandboxes' canvases are ~100 px), so only degenerate boxes (x2 ≤ x1, non-numbers) are errors.
    """
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ToolError(f"bbox must be a list of 4 numbers [x1, y1, x2, y2], got {bbox!r}")
    if not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bbox):
        raise ToolError(f"bbox values must be finite numbers, got {bbox!r}")
    img = to_pil(image)
    W, H = img.size
    x1, y1, x2, y2 = (float(b) for b in bbox)
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"bbox must have x2 > x1 and y2 > y1, got {bbox!r}")
    if not all(0.0 <= b <= 1.0 for b in (x1, y1, x2, y2)):
        x1, x2, y1, y2 = x1 / W, x2 / W, y1 / H, y2 / H
    x1, y1 = max(0.0, x1 - pad), max(0.0, y1 - pad)
    x2, y2 = min(1.0, x2 + pad), min(1.0, y2 + pad)
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"bbox {bbox!r} lies outside the image ({W}x{H})")
    box = [x1 * W, y1 * H, x2 * W, y2 * H]
    for lo, hi, extent in ((0, 2, W), (1, 3, H)):  # grow a too-small side around its centre, inside the image
        side = min(float(min_size), float(extent))
        if box[hi] - box[lo] < side:
            c = (box[lo] + box[hi]) / 2
            box[lo] = min(max(0.0, c - side / 2), extent - side)
            box[hi] = box[lo] + side
    left, top = int(math.floor(box[0])), int(math.floor(box[1]))
    right, bottom = max(left + 1, int(math.ceil(box[2]))), max(top + 1, int(math.ceil(box[3])))
    return img.crop((left, top, right, bottom)).resize((size, size), Image.Resampling.BICUBIC)


def select_frames(frames: list[Any], indices: list[int], max_count: int = 8) -> list[Any]:
    """The frames at 1-based `indices` (at most `max_count`, as the released code: "no more than 8 frames")."""
    if not isinstance(indices, list | tuple) or not indices:
        raise ToolError(f"target_frames must be a non-empty list of frame indices, got {indices!r}")
    if len(indices) > max_count:
        raise ToolError(f"select no more than {max_count} frames, got {len(indices)}")
    if not frames:
        raise ToolError("there are no frames to select from")
    out = []
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= len(frames):
            raise ToolError(f"frame index {i!r} is not an integer from 1 to {len(frames)}")
        out.append(frames[i - 1])
    return out


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str, max_len: int = 200) -> str:
    """Safe arithmetic: numbers, + - * / // % **, unary signs and parentheses, parsed with `ast` (no `eval`).
    Exponents are limited to |e| ≤ 64 and results to |x| ≤ 1e100 so that a call cannot stall the rollout.

    >>> calculator("(7+2)*3 - 4/2")
    '25'
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError(f"expression must be a non-empty string, got {expression!r}")
    if len(expression) > max_len:
        raise ToolError(f"expression longer than {max_len} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"cannot parse {expression!r}: {e.msg}") from None

    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(b) > 64:
                raise ToolError(f"exponent {b} too large (|e| <= 64)")
            try:
                v = _BINOPS[type(node.op)](a, b)
            except (ZeroDivisionError, OverflowError, ValueError) as e:
                raise ToolError(f"{e}") from None
            if isinstance(v, complex) or abs(v) > 1e100:
                raise ToolError("result out of range")
            return v
        raise ToolError(f"unsupported expression element {type(node).__name__!r} (numbers and + - * / // % ** only)")

    v = ev(tree)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


# ---- registry adapters: tool(arguments, ctx) -> Observation --------------------------------------------------


def _arg(arguments: dict[str, Any], *names: str, default: Any = ...) -> Any:
    for n in names:
        if n in arguments:
            return arguments[n]
    if default is not ...:
        return default
    raise ToolError(f"missing argument {names[0]!r}")


def crop_tool(arguments: dict[str, Any], ctx: ToolContext) -> Observation:
    """`{"bbox_2d": [x1, y1, x2, y2], "target_image": k}` (k from 1, default 1): a crop of image k."""
    k = _arg(arguments, "target_image", "image_index", default=1)
    if not isinstance(k, int | float) or isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= len(ctx.images):
        raise ToolError(f"target_image must be an image index from 1 to {len(ctx.images)}, got {k!r}")
    img = crop(ctx.images[int(k) - 1], _arg(arguments, "bbox_2d", "bbox"), ctx.image_size)
    return Observation(f"Here is the cropped image (Image Size: {img.size[0]}x{img.size[1]}):", [img])


def select_frames_tool(arguments: dict[str, Any], ctx: ToolContext) -> Observation:
    """`{"target_frames": [i, …]}` (1-based): those frames of `meta["frames"]`, resampled to the model's size."""
    idx = _arg(arguments, "target_frames", "indices")
    frames = select_frames(list(ctx.meta.get("frames") or []), idx, ctx.max_frames)
    imgs = [to_pil(f).resize((ctx.image_size, ctx.image_size), Image.Resampling.BICUBIC) for f in frames]
    return Observation(f"Here are the selected frames (Frame Size: {ctx.image_size}x{ctx.image_size}, "
                       f"Numbered {idx[0]} to {idx[-1]}):", imgs)


def calculator_tool(arguments: dict[str, Any], ctx: ToolContext) -> Observation:
    """`{"expression": "…"}`: the value of the arithmetic expression, as text."""
    return Observation(calculator(_arg(arguments, "expression")))


def register_tool(name: str, fn: Tool) -> None:
    """Add (or replace) a tool under `name`; `fn(arguments, ctx) -> Observation`, raising ToolError on bad input."""
    TOOLS[name] = fn


TOOLS: dict[str, Tool] = {
    "crop_image": crop_tool,
    "select_frames": select_frames_tool,
    "calculator": calculator_tool,
}
