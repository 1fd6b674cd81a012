"""Tools a policy can call inside its reasoning, and the registry `TOOLS` the multi-turn rollout looks them up in.

Pixel Reasoner (arXiv 2505.15966; verl-tool `servers/tools/pixel_reasoner.py`) gives the model two visual
operations, `crop_image` and `select_frames`; `calculator` is a text tool (the loop is not vision-specific).

A registry entry has one signature, `tool(arguments: dict, ctx: ToolContext) -> Observation`: `arguments` is the
JSON object of the call, `ctx` the trajectory's context (its images so far, the example's `meta`, the model's
input size). Bad arguments raise `ToolError(message)`; the rollout turns the message into an error observation.
Users extend the registry with `register_tool(name, fn)`.

The pure functions under the adapters (`crop`, `select_frames`, `calculator`) take plain values and are usable on
their own. `tools_prompt(names, ...)` writes the tool descriptions shown to the model (Pixel Reasoner's Qwen-style
`<tools>` block), with the box convention of the `crop_image` call spelled out.

Box frame. A `crop_image` box is read in the frame the policy saw, not in the original image's pixels: relative
[0, 1] when every value is ≤ 1, else pixels of that image as the policy's processor resized it (`BOX_FRAMES`:
"pixels"), or a 0–1000 grid ("grid1000"). The frame follows the model family's grounding convention
(`FAMILY_BOX_FRAMES`): Qwen2.5-VL grounds in absolute pixels of the resized input, Qwen2-VL in a [0, 1000) grid;
credo's TinyVLM uses pixels. credo's VLMs resize every image to `image_size` × `image_size`
(`models/vlm.py::image_tensor`, `models/hf_vlm.py::to_rgb_array`), a stretch without crop or pad, so relative
coordinates agree across frames and a pixel box maps to the original by the ratio of the two sizes.
"""

from __future__ import annotations

import ast
import json
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
    `select_frames`), the model's input size (crops and frames are resampled to it), and the frame boxes are
    read in (`frame_of`: the size the policy saw each image at; `box_frame`: pixels or a 0–1000 grid)."""

    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    image_size: int = 48
    max_frames: int = 8
    # (width, height) of an image → the (width, height) the policy sees it at; None: every image is seen at
    # image_size × image_size (credo's TinyVLM and HFVLMPolicy). A processor that keeps the aspect ratio
    # (Qwen's smart_resize) passes its own rule here.
    seen_size: Callable[[int, int], tuple[int, int]] | None = None
    box_frame: str = "pixels"  # frame of a box with a value > 1: "pixels" of the seen image, or "grid1000"

    def frame_of(self, image: Any) -> tuple[int, int]:
        """(width, height) of `image` as the policy saw it: the frame its pixel boxes refer to."""
        if self.seen_size is None:
            return self.image_size, self.image_size
        if isinstance(image, Image.Image):
            return self.seen_size(*image.size)
        h, w = np.asarray(image).shape[:2]
        return self.seen_size(int(w), int(h))


Tool = Callable[[dict[str, Any], ToolContext], Observation]

BOX_FRAMES = ("pixels", "grid1000")
"""Frames of a box with a value > 1: pixels of the image as the policy saw it, or a 0–1000 grid."""

FAMILY_BOX_FRAMES: dict[str, str] = {"qwen2_5_vl": "pixels", "qwen2_vl": "grid1000", "tinyvlm": "pixels"}
"""Each model family's grounding convention (config.json `model_type` → frame): Qwen2.5-VL grounds in absolute
pixels of its resized input (Qwen2.5-VL report, arXiv 2502.13923), Qwen2-VL in coordinates normalised to
[0, 1000) (Qwen2-VL report, arXiv 2409.12191). Unknown families: "pixels"."""


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


def relative_box(
    bbox: Any, frame: tuple[int, int], box_frame: str = "pixels"
) -> tuple[float, float, float, float]:
    """`bbox = [x1, y1, x2, y2]` as relative coordinates (fractions of width and height, not clipped).

    Relative when every value is in [0, 1] (the released code's rule, `CropImageNormalized.call`); otherwise
    pixels of `frame` = (width, height), the image as the policy saw it (`box_frame = "pixels"`), or a 0–1000
    grid (`"grid1000"`). Raises ToolError on a malformed or empty box (x2 ≤ x1 or y2 ≤ y1) or an unknown frame.

    >>> relative_box([24, 24, 48, 48], (48, 48))
    (0.5, 0.5, 1.0, 1.0)
    >>> relative_box([0.1, 0.2, 0.3, 0.4], (48, 48))
    (0.1, 0.2, 0.3, 0.4)
    """
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ToolError(f"bbox must be a list of 4 numbers [x1, y1, x2, y2], got {bbox!r}")
    if not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bbox):
        raise ToolError(f"bbox values must be finite numbers, got {bbox!r}")
    if box_frame not in BOX_FRAMES:
        raise ToolError(f"unknown box frame {box_frame!r}; choose one of {BOX_FRAMES}")
    x1, y1, x2, y2 = (float(b) for b in bbox)
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"bbox must have x2 > x1 and y2 > y1, got {bbox!r}")
    if all(0.0 <= b <= 1.0 for b in (x1, y1, x2, y2)):
        return x1, y1, x2, y2
    W, H = (1000.0, 1000.0) if box_frame == "grid1000" else (float(frame[0]), float(frame[1]))
    return x1 / W, y1 / H, x2 / W, y2 / H


def crop(
    image: Any,
    bbox: list[float],
    size: int,
    min_size: int = 4,
    pad: float = 0.1,
    frame: tuple[int, int] | None = None,
    box_frame: str = "pixels",
) -> Image.Image:
    """The region `bbox = [x1, y1, x2, y2]` of `image`, padded and resampled to `size` × `size` (PIL).

    Coordinates (`relative_box`): relative in [0, 1] when every value is ≤ 1, else pixels of `frame` =
    (width, height), the size at which the policy saw the image (None: the image's own size, for an image seen
    unresized), or a 0–1000 grid with `box_frame = "grid1000"`. E.g. a 192 px canvas seen at 48 px: the box
    [24, 24, 48, 48] with `frame = (48, 48)` is the bottom-right quadrant. The crop itself is cut from `image` at
    full resolution. Each side is padded by `pad` (relative, OpenRLHF p = 0.1) and clipped to the image.
    Departure: the code asserts a crop larger than 28 px; here a box smaller than `min_size` pixels (of `image`)
    is grown around its centre instead (the tiny sandboxes' canvases are ~100 px), so only degenerate boxes
    (x2 ≤ x1, non-numbers) are errors (ToolError).
    """
    img = to_pil(image)
    W, H = img.size
    x1, y1, x2, y2 = relative_box(bbox, frame or (W, H), box_frame)
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
    """`{"bbox_2d": [x1, y1, x2, y2], "target_image": k}` (k from 1, default 1): a crop of image k, the box read
    in the frame the policy saw image k in (`ctx.frame_of`, `ctx.box_frame`; module docstring)."""
    k = _arg(arguments, "target_image", "image_index", default=1)
    if not isinstance(k, int | float) or isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= len(ctx.images):
        raise ToolError(f"target_image must be an image index from 1 to {len(ctx.images)}, got {k!r}")
    image = ctx.images[int(k) - 1]
    bbox = _arg(arguments, "bbox_2d", "bbox")
    img = crop(image, bbox, ctx.image_size, frame=ctx.frame_of(image), box_frame=ctx.box_frame)
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


def register_tool(name: str, fn: Tool, spec: dict[str, Any] | None = None) -> None:
    """Add (or replace) a tool under `name`; `fn(arguments, ctx) -> Observation`, raising ToolError on bad input.
    `spec` is its function schema for `tool_specs` ({"description": …, "parameters": {JSON schema}}); without
    one, the description is the first line of `fn`'s docstring and the parameters are left open."""
    TOOLS[name] = fn
    if spec is not None:
        USER_SPECS[name] = spec
    else:
        USER_SPECS.pop(name, None)


# ---- descriptions shown to the model -------------------------------------------------------------------------


def box_description(box_frame: str = "pixels", image_size: int | None = None) -> str:
    """How the model is told to write a `crop_image` box: the frame it saw (module docstring), in words."""
    if box_frame not in BOX_FRAMES:
        raise ValueError(f"unknown box frame {box_frame!r}; choose one of {BOX_FRAMES}")
    if box_frame == "grid1000":
        other = "or on a 0-1000 grid (the image's width and height are 1000)"
    else:
        seen = f", {image_size}x{image_size} for every image here" if image_size else ""
        other = f"or in pixels of the image as you see it (its Image Size{seen})"
    return ("coordinates [x1, y1, x2, y2] of the area to zoom in on, (x1, y1) its top-left and (x2, y2) its "
            "bottom-right corner: either relative, every value between 0 and 1 (the image's width and height are "
            f"1), {other}.")


def tool_specs(
    names: list[str], box_frame: str = "pixels", image_size: int | None = None, n_frames: int = 16, max_frames: int = 8
) -> list[dict[str, Any]]:
    """OpenAI-style function schemas of the tools `names`, as Pixel Reasoner's system prompt lists them
    (methods.md §2.1), with credo's box convention (`box_description`) in `crop_image`'s `bbox_2d`. The list is
    what `tokenizer.apply_chat_template(..., tools=...)` takes. Raises KeyError on a name not in `TOOLS`."""
    builtin: dict[str, dict[str, Any]] = {
        "crop_image": {"description": "Zoom in on the image based on the bounding box coordinates.", "parameters": {
            "type": "object", "properties": {
                "bbox_2d": {"type": "array", "description": box_description(box_frame, image_size),
                            "items": {"type": "number"}},
                "target_image": {"type": "number", "description": "The index of the image to crop. Index from 1 to "
                                 "the number of images. Choose 1 to operate on original image."}},
            "required": ["bbox_2d", "target_image"]}},
        "select_frames": {"description": "Select frames from a video.", "parameters": {
            "type": "object", "properties": {"target_frames": {
                "type": "array", "description": "List of frame indices to select from the video (no more than "
                f"{max_frames} frames in total).", "items": {"type": "integer",
                                                             "description": f"Frame index from 1 to {n_frames}."}}},
            "required": ["target_frames"]}},
        "calculator": {"description": "Evaluate an arithmetic expression (numbers, + - * / // % ** and parentheses).",
                       "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                      "required": ["expression"]}},
    }
    out = []
    for name in names:
        fn = TOOLS[name]
        spec = USER_SPECS.get(name) or (builtin.get(name) if fn is _BUILTIN.get(name) else None)
        if spec is None:
            spec = {"description": (fn.__doc__ or name).strip().splitlines()[0], "parameters": {"type": "object"}}
        out.append({"type": "function", "function": {"name": name, **spec}})
    return out


def tools_prompt(names: list[str], box_frame: str = "pixels", image_size: int | None = None, **kw: Any) -> str:
    """The `# Tools` system text of Qwen2.5's chat template (Pixel Reasoner's system prompt, methods.md §2.1) for
    the tools `names` (`tool_specs`, `kw` forwarded), for prompts built without the template's `tools=`."""
    lines = "\n".join(json.dumps(spec) for spec in tool_specs(names, box_frame, image_size, **kw))
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
            f"function signatures within <tools></tools> XML tags:\n<tools>\n{lines}\n</tools>\n\nFor each function "
            "call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:"
            '\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


TOOLS: dict[str, Tool] = {
    "crop_image": crop_tool,
    "select_frames": select_frames_tool,
    "calculator": calculator_tool,
}
_BUILTIN: dict[str, Tool] = dict(TOOLS)  # a user tool registered under a built-in name gets no built-in spec
USER_SPECS: dict[str, dict[str, Any]] = {}  # register_tool's specs
