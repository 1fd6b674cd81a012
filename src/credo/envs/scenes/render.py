"""Render a scene with Pillow to a small RGB image, returned as a uint8 numpy array [H, W, 3].

Why an array and not a PIL image: it is what `models/vlm.py::image_tensor` takes without a resize (channels last,
as PIL and HF image processors use), it pickles compactly to verifier workers, and `torch.from_numpy` shares its
memory; `to_pil` gives the PIL image back for HF processors and for looking at it.

Rendering is deterministic: the same scene, size and `rng` state give the same pixels. Each object is drawn
centred in its cell, moved by up to `jitter` pixels; a large object spans about 3/4 of the cell, a small one about
2/5. Optional `noise` adds uniform integer noise in [-noise, noise] to every channel.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from credo.envs.scenes.scene import Scene

RGB = {"red": (220, 40, 40), "green": (30, 160, 50), "blue": (40, 80, 230), "yellow": (235, 200, 20)}
BACKGROUND = (235, 235, 235)
HALF = {"large": 0.38, "small": 0.21}  # half-extent of a shape, as a fraction of the cell side


def draw(scene: Scene, size: int = 48, grid: int = 3, jitter: int = 1, rng: random.Random | None = None) -> Image.Image:
    """The scene as a PIL RGB image of `size` × `size` pixels (jitter needs `rng`; without one, no jitter)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    pen = ImageDraw.Draw(img)
    cell = size / grid
    for o in scene:
        h = HALF[o.size] * cell
        room = max(0, int(cell / 2 - HALF["large"] * cell))  # jitter never moves a shape out of its cell
        j = min(jitter, room)
        dx, dy = (rng.randint(-j, j), rng.randint(-j, j)) if rng is not None and j > 0 else (0, 0)
        cx, cy = (o.col - 0.5) * cell + dx, (o.row - 0.5) * cell + dy
        box = (round(cx - h), round(cy - h), round(cx + h) - 1, round(cy + h) - 1)
        fill = RGB[o.colour]
        if o.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif o.shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
    return img


def to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as a writable uint8 array [H, W, 3]."""
    return np.array(img.convert("RGB"), dtype=np.uint8)


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 [H, W, 3] array (or tensor) as a PIL RGB image."""
    return Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")


def render(scene: Scene, size: int = 48, grid: int = 3, jitter: int = 1, noise: int = 0,
           rng: random.Random | None = None) -> np.ndarray:
    """The scene as a uint8 array [size, size, 3]; jitter and noise are drawn from `rng`.

    >>> import random
    >>> from credo.envs.scenes.scene import SceneObject
    >>> x = render((SceneObject(1, 1, "square", "red", "large"),), rng=random.Random(0))
    >>> x.shape, x.dtype, x[8, 8].tolist(), x[40, 40].tolist()
    ((48, 48, 3), dtype('uint8'), [220, 40, 40], [235, 235, 235])
    """
    x = to_array(draw(scene, size, grid, jitter, rng))  # [H, W, 3]
    if noise > 0 and rng is not None:
        delta = np.random.default_rng(rng.getrandbits(63)).integers(-noise, noise + 1, x.shape)
        x = np.clip(x.astype(np.int16) + delta, 0, 255).astype(np.uint8)
    return x


__all__ = ["BACKGROUND", "RGB", "draw", "render", "to_array", "to_pil"]
