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


def warm_start_diagnostics(policy: Any, tokenizer: Any, env: ZoomEnv, examples: list[Example], n_samples: int = 4,
                           seed: int = 0, tools: dict | None = None) -> dict[str, float]:
    """Where a zoom policy fails, on `examples` (held-out canvases):

    - `read_after_crop`: teacher-forced digit accuracy (argmax over the ten digits) at the answer of the
      reference tool trace, i.e. after the REAL crop of the reference box; `answer_nll_after_crop` its mean NLL
      (ln 10 = 2.30 is chance) and `call_token_nll` the mean NLL of the call's tokens;
    - `read_crop_prompt`: the same when the prompt image is the crop (a read trace); `read_direct`: the direct
      answer from the canvas alone;
    - from `n_samples` sampled multi-turn rollouts (T = 1, two turns): `call_rate` (≥ 1 valid crop),
      `call_iou` (mean IoU of the call's box with the reference box), `call_holds_frame` (share of calls whose
      box holds the whole red frame) and `acc_after_call` (accuracy of the rollouts that cropped).
    """
    import torch

    from credo.data import SEGMENTS
    from credo.rollout.multiturn import multiturn_rollout, parse_tool_call, reference_trajectory
    from credo.rollout.sampler import SamplingParams

    image_size = getattr(getattr(policy, "cfg", None), "image_size", 48)
    digits = [tokenizer.encode(str(d))[0] for d in range(10)]
    tag = tokenizer.encode("<answer>")

    def digit_logits(ids: list[int], images: list) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Logits at the answer digit (position k, after the last `<answer>`), all logits, and k."""
        k = max(i for i in range(len(ids) - len(tag) + 1) if ids[i : i + len(tag)] == tag) + len(tag)
        out = policy.forward(torch.tensor([ids[: k + 1]]), images=[images])
        return out[0, k - 1].float(), out[0].float(), k

    n = max(1, len(examples))
    sums = dict.fromkeys(("read_after_crop", "answer_nll_after_crop", "read_crop_prompt", "read_direct"), 0.0)
    call_nll, call_tokens = 0.0, 0
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            for ex in examples:
                s = reference_trajectory(tokenizer, env, ex, list(env.tool_trace(ex)), tools, image_size)
                ids = s.prompt_ids.tolist() + s.completion_ids.tolist()
                last, logits, k = digit_logits(ids, list(s.images or []))
                sums["read_after_crop"] += int(last[digits].argmax()) == ex.reference
                sums["answer_nll_after_crop"] -= float(torch.log_softmax(last, -1)[ids[k]])
                P = len(s.prompt_ids)  # logits cover ids[: k + 1]; lp[j] = log p(ids[j + 1] | ids[: j + 1])
                lp = torch.log_softmax(logits[:k], -1).gather(1, torch.tensor(ids[1 : k + 1])[:, None])[:, 0]
                call = ((s.segment_ids == SEGMENTS["tool_call"]) & (s.loss_mask > 0))[: k - P + 1]
                call_nll -= float(lp[P - 1 : k][call].sum())
                call_tokens += int(call.sum())
                prompt = tokenizer.with_images(tokenizer.encode_prompt(env.render_prompt(ex)), 1) + tag
                crop_img = crop(ex.images[0], ex.meta["box"], image_size)
                out = policy.forward(torch.tensor([prompt]), images=[[crop_img]])
                sums["read_crop_prompt"] += int(out[0, -1, digits].argmax()) == ex.reference
                direct = tokenizer.with_images(tokenizer.encode_prompt(env.render_prompt(ex)), 1) + tag
                out = policy.forward(torch.tensor([direct]), images=[list(ex.images)])
                sums["read_direct"] += int(out[0, -1, digits].argmax()) == ex.reference
        res = {k: v / n for k, v in sums.items()}
        res["call_token_nll"] = call_nll / max(1, call_tokens)
        samples, _ = multiturn_rollout(policy, tokenizer, env, examples, n_samples, SamplingParams(128, 1.0),
                                       torch.Generator().manual_seed(seed), max_turns=2, max_images=2, tools=tools)
    finally:
        policy.train(was_training)
    ious, holds, right = [], [], []
    for i, s in enumerate(samples):
        if s.n_tool_calls == 0:
            continue
        ex = examples[i // n_samples]
        call_text = s.text[: s.text.index("</tool_call>") + len("</tool_call>")]
        box = parse_tool_call(call_text)[1].get("bbox_2d")
        frame = ex.meta.get("frame", ex.meta["box"])
        ious.append(box_iou(box, ex.meta["box"]))
        holds.append(box[0] <= frame[0] and box[1] <= frame[1] and box[2] >= frame[2] and box[3] >= frame[3])
        right.append(env.verify(s.text, ex).value >= 1.0)
    m = max(1, len(ious))
    res.update(call_rate=len(ious) / max(1, len(samples)), call_iou=sum(ious) / m, call_holds_frame=sum(holds) / m,
               acc_after_call=sum(right) / m)
    return res


def main(argv: list[str] | None = None) -> int:
    """`python -m credo.envs.zoom MODEL_DIR CONFIG [key=value ...]`: `warm_start_diagnostics` of a saved model on
    the preset's held-out canvases, with the preset's tools, printed as JSON."""
    import argparse

    import torch

    from credo.envs import make_env
    from credo.envs.tools import TOOLS
    from credo.models import load_policy
    from credo.trainer.config import load_config

    ap = argparse.ArgumentParser(prog="python -m credo.envs.zoom", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.run.threads)
    env = make_env(cfg.env)
    policy, tok = load_policy(args.model, cfg.model)
    res = warm_start_diagnostics(policy, tok, env, env.examples("test"), args.samples, cfg.run.seed,
                                 {name: TOOLS[name] for name in cfg.rl.tools})
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
