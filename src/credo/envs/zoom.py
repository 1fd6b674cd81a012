"""The `zoom` sandbox (vision, tools): a large canvas shown downsampled, whose one marked digit is only readable in
a crop (Pixel Reasoner's V* -style "look closer" questions at toy scale).

A `canvas` × `canvas` image holds a few small seven-segment digits (`digit_px` tall) on a noisy background; one
of them sits in a red frame. At the model's input size (`image_size`, e.g. 192 → 48: 4× smaller) a digit is a
couple of pixels and unreadable, the red frame still visible; `crop_image` on the frame (the tool pads it by 0.1
and resamples to `image_size`) shows the digit several times larger. The answer is the framed digit:

    prompt:  "which digit is in the red box?\\n"       images: [canvas]
    trace:   <tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0.41, 0.2, 0.55, 0.34], "target_image": 1}}
             </tool_call> … (observation) … <answer>7</answer>

`meta` keeps the frame (`frame`, relative [x1, y1, x2, y2]), the box the warm start's call writes (`box`: the
frame rounded outwards to `box_decimals`, `reference_box`) and the digits. `tool_trace(example)` gives the
warm-start demonstration as (call text, answer text). `reference_turns` is what SFT trains on: for
`sft_tool_frac` of the warm-start examples the two policy turns [call, answer], between which multi-turn SFT
(`trainer/sft.py::sft_rows`) inserts the REAL crop as the rollout would; the rest answer directly, [answer].
`reference_completion` (single text, for code that wants one string) joins the turns around an observation
stub and is not what SFT uses.

Warm-start options (ZoomConfig, `env.options` in a preset): `read_frac` of the "sft" examples are *read*
traces, whose prompt image is already the crop `crop_image` returns on the reference box (resampled to
`read_size`, the model's input size) and whose trace answers directly: cheap rows that teach reading the digit
(the evaluation and RL splits never have them, and their canvases do not depend on these options).
`background` / `ink` set the canvas and digit grey levels: TinyVLM's linear patch embedding takes raw pixels
in [0, 1], so on the default light canvas the constant background dominates every patch and a small model
learns to read the digit very slowly; light digits on a black canvas (`background = 0, ink = 255`) learn
fast (docs/tools-log.md). Without the crop the digit is 3 px tall at 48 px: a small model does not read it,
although its pixels still determine it (a linear probe on an 8 × 8 window placed exactly on the frame reads it).

    credo train env.name=credo.envs.zoom:from_config model.kind=tinyvlm model.image_size=48
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from credo.data import Example
from credo.envs.base import Score
from credo.envs.tools import crop
from credo.envs.verifiers.answer_tag import verify_integer

# seven segments a..g as (x1, y1, x2, y2) in a unit 1 × 2 cell; digits as their lit segments
_SEGMENTS = {"a": (0, 0, 1, 0), "b": (1, 0, 1, 1), "c": (1, 1, 1, 2), "d": (0, 2, 1, 2), "e": (0, 1, 0, 2),
             "f": (0, 0, 0, 1), "g": (0, 1, 1, 1)}
_DIGITS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def draw_digit(draw: ImageDraw.ImageDraw, digit: int, x: float, y: float, h: float, fill: tuple, width: int) -> None:
    """A seven-segment `digit` of height `h` with its top-left corner at (x, y)."""
    s = h / 2
    for seg in _DIGITS[digit]:
        x1, y1, x2, y2 = _SEGMENTS[seg]
        draw.line([(x + x1 * s, y + y1 * s), (x + x2 * s, y + y2 * s)], fill=fill, width=width)


@dataclass
class ZoomConfig:
    canvas: int = 192  # canvas side in pixels (the model sees it resized to its image_size)
    digit_px: int = 12  # digit height in canvas pixels
    n_digits: int = 4  # digits on the canvas (one framed, the others distractors)
    noise: int = 40  # background noise amplitude (0-255)
    background: int = 200  # background grey level (0-255); the digits are drawn in `ink`
    ink: int = 20  # digit grey level (0-255); e.g. background 30, ink 230: light digits on a dark canvas
    box_decimals: int = 2  # decimals of the reference box (the call the warm start writes); 1: a shorter call
    sft_tool_frac: float = 0.5  # share of warm-start traces that demonstrate a crop
    read_frac: float = 0.0  # share of warm-start examples that are "read" traces: the prompt image IS the crop
    read_size: int = 48  # side of a read trace's crop (set it to the model's image_size, as the tool resamples)
    n_sft: int = 2000
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0


class ZoomEnv:
    """Environment over zoom canvases; see the module docstring."""

    name = "zoom"

    def __init__(self, cfg: ZoomConfig | None = None) -> None:
        self.cfg = cfg or ZoomConfig()
        self._splits: dict[str, list[Example]] = {}

    def render(self, meta: dict[str, Any]) -> Image.Image:
        """The canvas of `meta` (deterministic: its own noise seed)."""
        c = self.cfg
        rng = np.random.default_rng(meta["noise_seed"])
        base = c.background + rng.integers(-c.noise // 2, c.noise // 2 + 1, (c.canvas, c.canvas, 3))
        img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        w = max(1, c.digit_px // 6)
        for d, (x, y) in zip(meta["digits"], meta["positions"], strict=True):
            draw_digit(draw, d, x, y, c.digit_px, (c.ink,) * 3, w)
        x1, y1, x2, y2 = (v * c.canvas for v in meta.get("frame", meta["box"]))  # the exact frame, not the call
        draw.rectangle([x1, y1, x2, y2], outline=(220, 0, 0), width=max(1, c.canvas // 96))
        return img

    def _example(self, rng: random.Random, tag: str, i: int) -> Example:
        c = self.cfg
        cell = 2 * c.digit_px  # digits sit in a grid of cells so that frames never overlap another digit
        n_cells = c.canvas // cell
        cells = rng.sample([(r, k) for r in range(1, n_cells - 1) for k in range(1, n_cells - 1)], c.n_digits)
        digits = [rng.randrange(10) for _ in cells]
        positions = [(k * cell + c.digit_px / 4 + rng.uniform(0, c.digit_px / 4),
                      r * cell + rng.uniform(0, c.digit_px / 2)) for r, k in cells]
        x, y = positions[0]
        m = c.digit_px / 4
        frame = [(x - m) / c.canvas, (y - m) / c.canvas, (x + c.digit_px / 2 + m) / c.canvas,
                 (y + c.digit_px + m) / c.canvas]
        meta = {"digits": digits, "positions": positions, "frame": frame, "box": reference_box(frame, c.box_decimals),
                "noise_seed": rng.randrange(2**31), "tool_trace": rng.random() < c.sft_tool_frac}
        ex = Example(id=f"zoom-{tag}-{i}", prompt="which digit is in the red box?", reference=digits[0], meta=meta,
                     env=self.name)
        canvas = self.render(meta)
        # a read trace (warm-start split only; its own coin, so the canvases of every split stay as they were)
        if tag == "sft" and random.Random(f"zoom/{c.seed}/read/{i}").random() < c.read_frac:
            meta["read"] = True
            ex.images = [crop(canvas, meta["box"], c.read_size)]
        else:
            ex.images = [canvas]
        return ex

    def examples(self, split: str) -> list[Example]:
        if split not in ("sft", "train", "test"):
            raise ValueError(f"zoom: unknown split {split!r} (expected sft, train or test)")
        if split not in self._splits:
            n = {"sft": self.cfg.n_sft, "train": self.cfg.n_train, "test": self.cfg.n_test}[split]
            rng = random.Random(f"zoom/{self.cfg.seed}/{split}")  # disjoint seeds: canvases never repeat
            self._splits[split] = [self._example(rng, split, i) for i in range(n)]
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        return f"{example.prompt}\n"

    def tool_trace(self, example: Example) -> tuple[str, str]:
        """(the crop call on the red frame, the answer after the observation): a warm-start demonstration."""
        call = {"name": "crop_image", "arguments": {"bbox_2d": example.meta["box"], "target_image": 1}}
        return f"<tool_call>{json.dumps(call)}</tool_call>", f"<answer>{example.reference}</answer>"

    def reference_turns(self, example: Example) -> list[str]:
        """Policy turns of the warm-start trace: [crop call, answer] on a tool-trace example, else [answer] (a read
        trace, whose prompt image is already the crop, answers directly)."""
        if example.meta.get("read") or not example.meta.get("tool_trace"):
            return [f"<answer>{example.reference}</answer>"]
        return list(self.tool_trace(example))

    def reference_completion(self, example: Example) -> str:
        if example.meta.get("read") or not example.meta.get("tool_trace"):
            return f"<answer>{example.reference}</answer>"
        call, answer = self.tool_trace(example)
        return f"{call}\n<observation>Here is the cropped image:</observation>\n{answer}"

    def verify(self, completion: str, example: Example) -> Score:
        return verify_integer(completion, example.reference)


def reference_box(frame: list[float], decimals: int = 2) -> list[float]:
    """The frame [x1, y1, x2, y2] (relative) as the warm start's call writes it: rounded to `decimals`, outwards
    (x1, y1 down, x2, y2 up) so that the box always holds the whole frame. 1 decimal: a shorter call, and the crop
    (padded by 0.1 on every side) still shows the whole digit.

    >>> reference_box([0.513, 0.634, 0.578, 0.721], 1)
    [0.5, 0.6, 0.6, 0.8]
    """
    q = 10**decimals
    eps = 1e-9  # 0.5 * 10 = 5.000000000000001 must not round up to the next step
    lo = [round(math.floor(v * q + eps) / q, decimals) for v in frame[:2]]
    hi = [round(math.ceil(v * q - eps) / q, decimals) for v in frame[2:]]
    return [lo[0], lo[1], hi[0], hi[1]]


OPTIONS = {f.name for f in dataclasses.fields(ZoomConfig)} - {"n_sft", "n_train", "n_test", "seed"}


def from_config(cfg: Any) -> ZoomEnv:  # cfg: trainer.config.EnvConfig
    options = dict(getattr(cfg, "options", None) or {})
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"zoom: unknown env.options {sorted(unknown)}; available: {', '.join(sorted(OPTIONS))}")
    return ZoomEnv(ZoomConfig(n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, **options))


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
