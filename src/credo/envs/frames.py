"""The `frames` sandbox (vision, tools): a short frame sequence shown as one thumbnail grid; the question concerns one
frame, whose content is only readable at full resolution, after `select_frames` (Pixel Reasoner's video questions
at toy scale).

An example is `n_frames` frames of `frame_px` × `frame_px` pixels: a noisy light background with a dark
seven-segment digit (`digit_px` tall) that moves along a straight line from frame to frame, a different digit in
every frame. The prompt's one image is the grid of the frames downsampled to `thumb_px` each (row-major, frame 1
top-left, `ceil(sqrt(n_frames))` columns, padded to a square with grey cells): at that size a digit is a few
blurred pixels (its strokes are thinner than a thumbnail pixel), while its position is still visible.
`select_frames` (envs/tools.py) returns the requested frame(s) of `meta["frames"]` resampled to the model's input
size, where the digit is readable. The answer is the digit of frame k:

    prompt:  "frames 1-6: which digit is in frame 3?\\n"       images: [thumbnail grid]
    turns:   <tool_call>{"name": "select_frames", "arguments": {"target_frames": [3]}}</tool_call>
             … (observation: frame 3 at full size) … <answer>7</answer>

`meta` holds the frames (uint8 arrays, for the tool context), the digits, the asked frame `target` (1-based)
and `tool_trace`: whether the warm-start trace of this example demonstrates the call (a share `sft_tool_frac`
of the examples; the others answer directly). `reference_turns` gives the policy turns multi-turn SFT trains on
(`trainer/sft.py::sft_rows` inserts the real frame). Splits are seeded per split and disjoint: a train or sft
example never repeats a test example's (digits, asked frame).

    credo train env.name=frames model.kind=tinyvlm model.image_size=48 rl.multiturn=true 'rl.tools=["select_frames"]'
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
from credo.envs.verifiers.answer_tag import verify_integer
from credo.envs.zoom import draw_digit


@dataclass
class FramesConfig:
    n_frames: int = 6  # frames per example (select_frames takes at most 8 per call)
    frame_px: int = 48  # frame side in pixels (what select_frames returns, resampled to the model's size)
    thumb_px: int = 6  # frame side in the prompt's thumbnail grid (a digit is ~2 px there: unreadable)
    digit_px: int = 20  # digit height in frame pixels
    noise: int = 40  # background noise amplitude (0-255)
    sft_tool_frac: float = 0.5  # share of warm-start traces that demonstrate a select_frames call
    n_sft: int = 2000
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the thumbnail grid: ceil(sqrt(n)) columns, as many rows as needed."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


class FramesEnv:
    """Environment over frame sequences; see the module docstring."""

    name = "frames"

    def __init__(self, cfg: FramesConfig | None = None) -> None:
        self.cfg = cfg or FramesConfig()
        c = self.cfg
        if c.n_frames < 2 or c.digit_px >= c.frame_px or c.thumb_px > c.frame_px:
            raise ValueError(f"frames: need n_frames >= 2, digit_px < frame_px, thumb_px <= frame_px; got {c}")
        self._splits: dict[str, list[Example]] = {}

    def render_frames(self, digits: list[int], path: list[tuple[float, float]], noise_seed: int) -> list[np.ndarray]:
        """One uint8 [frame_px, frame_px, 3] frame per digit, the digit's top-left corner at `path[i]`."""
        c = self.cfg
        rng = np.random.default_rng(noise_seed)
        w = max(1, c.digit_px // 7)
        out = []
        for d, (x, y) in zip(digits, path, strict=True):
            base = 200 + rng.integers(-c.noise // 2, c.noise // 2 + 1, (c.frame_px, c.frame_px, 3))
            img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
            draw_digit(ImageDraw.Draw(img), d, x, y, c.digit_px, (20, 20, 20), w)
            out.append(np.asarray(img))
        return out

    def thumbnails(self, frames: list[Any]) -> Image.Image:
        """The frames downsampled to `thumb_px` in a square row-major grid (empty cells grey)."""
        c = self.cfg
        rows, cols = grid_shape(len(frames))
        side = max(rows, cols) * c.thumb_px
        grid = Image.new("RGB", (side, side), (128, 128, 128))
        for i, f in enumerate(frames):
            thumb = Image.fromarray(np.asarray(f)).resize((c.thumb_px, c.thumb_px), Image.Resampling.BOX)
            grid.paste(thumb, ((i % cols) * c.thumb_px, (i // cols) * c.thumb_px))
        return grid

    def _example(self, rng: random.Random, tag: str, i: int, forbidden: set) -> Example:
        c = self.cfg
        while True:
            digits = [rng.randrange(10) for _ in range(c.n_frames)]
            target = rng.randrange(1, c.n_frames + 1)
            if (tuple(digits), target) not in forbidden:
                break
        span_x, span_y = c.frame_px - c.digit_px / 2 - 2, c.frame_px - c.digit_px - 2
        (x0, y0), (x1, y1) = [(rng.uniform(1, span_x), rng.uniform(1, span_y)) for _ in range(2)]
        path = [(x0 + (x1 - x0) * k / (c.n_frames - 1), y0 + (y1 - y0) * k / (c.n_frames - 1))
                for k in range(c.n_frames)]
        frames = self.render_frames(digits, path, rng.randrange(2**31))
        meta = {"frames": frames, "digits": digits, "target": target, "path": path,
                "tool_trace": rng.random() < c.sft_tool_frac}
        ex = Example(id=f"frames-{tag}-{i}", prompt=f"frames 1-{c.n_frames}: which digit is in frame {target}?",
                     reference=digits[target - 1], meta=meta, env=self.name)
        ex.images = [self.thumbnails(frames)]
        return ex

    def examples(self, split: str) -> list[Example]:
        if split not in ("sft", "train", "test"):
            raise ValueError(f"frames: unknown split {split!r} (expected sft, train or test)")
        if split not in self._splits:
            forbidden = set() if split == "test" else {
                (tuple(e.meta["digits"]), e.meta["target"]) for e in self.examples("test")}
            n = {"sft": self.cfg.n_sft, "train": self.cfg.n_train, "test": self.cfg.n_test}[split]
            rng = random.Random(f"frames/{self.cfg.seed}/{split}")
            self._splits[split] = [self._example(rng, split, i, forbidden) for i in range(n)]
        return self._splits[split]

    def render_prompt(self, example: Example) -> str:
        return f"{example.prompt}\n"

    def tool_trace(self, example: Example) -> tuple[str, str]:
        """(the select_frames call on the asked frame, the answer after the observation)."""
        call = {"name": "select_frames", "arguments": {"target_frames": [example.meta["target"]]}}
        return f"<tool_call>{json.dumps(call)}</tool_call>", f"<answer>{example.reference}</answer>"

    def reference_turns(self, example: Example) -> list[str]:
        """Policy turns of the warm-start trace: [call, answer] on a tool-trace example, else [answer]."""
        if not example.meta.get("tool_trace"):
            return [f"<answer>{example.reference}</answer>"]
        return list(self.tool_trace(example))

    def reference_completion(self, example: Example) -> str:
        """One string (not what SFT trains on, see `reference_turns`): the turns around an observation stub."""
        turns = self.reference_turns(example)
        return "\n<observation>(frames)</observation>\n".join(turns)

    def verify(self, completion: str, example: Example) -> Score:
        return verify_integer(completion, example.reference)


OPTIONS = {f.name for f in dataclasses.fields(FramesConfig)} - {"n_sft", "n_train", "n_test", "seed"}


def from_config(cfg: Any) -> FramesEnv:  # cfg: trainer.config.EnvConfig
    options = dict(getattr(cfg, "options", None) or {})
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"frames: unknown env.options {sorted(unknown)}; available: {', '.join(sorted(OPTIONS))}")
    return FramesEnv(FramesConfig(n_sft=cfg.n_sft, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, **options))
