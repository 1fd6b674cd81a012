"""The `zoom` sandbox (vision, tools): a large canvas shown downsampled, whose one marked digit is only readable in
a crop (Pixel Reasoner's V* -style "look closer" questions at toy scale).

A `canvas` × `canvas` image holds a few small seven-segment digits (`digit_px` tall) on a noisy background; one
of them sits in a red frame. At the model's input size (`image_size`, e.g. 192 → 48: 4× smaller) a digit is a
couple of pixels and unreadable, the red frame still visible; `crop_image` on the frame (the tool pads it by 0.1
and resamples to `image_size`) shows the digit several times larger. The answer is the framed digit:

    prompt:  "which digit is in the red box?\\n"       images: [canvas]
    trace:   <tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0.41, 0.2, 0.55, 0.34], "target_image": 1}}
             </tool_call> … (observation) … <answer>7</answer>

`meta` keeps the frame (`box`, relative [x1, y1, x2, y2]) and the digits. `tool_trace(example)` gives the
warm-start demonstration as (call text, answer text). `reference_turns` is what SFT trains on: for
`sft_tool_frac` of the warm-start examples the two policy turns [call, answer], between which multi-turn SFT
(`trainer/sft.py::sft_rows`) inserts the REAL crop as the rollout would; the rest answer directly, [answer].
`reference_completion` (single text, for code that wants one string) joins the turns around an observation
stub and is not what SFT uses.

    credo train env.name=credo.envs.zoom:from_config model.kind=tinyvlm model.image_size=48
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from credo.data import Example
from credo.envs.base import Score
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
    sft_tool_frac: float = 0.5  # share of warm-start traces that demonstrate a crop
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
        base = 200 + rng.integers(-c.noise // 2, c.noise // 2 + 1, (c.canvas, c.canvas, 3))
        img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        w = max(1, c.digit_px // 6)
        for d, (x, y) in zip(meta["digits"], meta["positions"], strict=True):
            draw_digit(draw, d, x, y, c.digit_px, (20, 20, 20), w)
        x1, y1, x2, y2 = (v * c.canvas for v in meta["box"])
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
        box = [round((x - m) / c.canvas, 2), round((y - m) / c.canvas, 2),  # 2 decimals: a shorter call to write
               round((x + c.digit_px / 2 + m) / c.canvas, 2), round((y + c.digit_px + m) / c.canvas, 2)]
        meta = {"digits": digits, "positions": positions, "box": box, "noise_seed": rng.randrange(2**31),
                "tool_trace": rng.random() < c.sft_tool_frac}
        ex = Example(id=f"zoom-{tag}-{i}", prompt="which digit is in the red box?", reference=digits[0], meta=meta,
                     env=self.name)
        ex.images = [self.render(meta)]
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
        """Policy turns of the warm-start trace: [crop call, answer] on a tool-trace example, else [answer]."""
        if not example.meta.get("tool_trace"):
            return [f"<answer>{example.reference}</answer>"]
        return list(self.tool_trace(example))

    def reference_completion(self, example: Example) -> str:
        if not example.meta.get("tool_trace"):
            return f"<answer>{example.reference}</answer>"
        call, answer = self.tool_trace(example)
        return f"{call}\n<observation>Here is the cropped image:</observation>\n{answer}"

    def verify(self, completion: str, example: Example) -> Score:
        return verify_integer(completion, example.reference)


OPTIONS = {f.name for f in dataclasses.fields(ZoomConfig)} - {"n_sft", "n_train", "n_test", "seed"}


def from_config(cfg: Any) -> ZoomEnv:  # cfg: trainer.config.EnvConfig
    options = dict(getattr(cfg, "options", None) or {})
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"zoom: unknown env.options {sorted(unknown)}; available: {', '.join(sorted(OPTIONS))}")
    return ZoomEnv(ZoomConfig(n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, **options))
