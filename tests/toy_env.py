"""A test-only environment with a dense reward: the share of digits in the completion.

Every group of samples from a random model then has non-zero reward variance, so a two-step RL run moves
every parameter without needing a warm-started model.
"""

from __future__ import annotations

from credo.data import Example
from credo.envs.base import Score


class DigitsEnv:
    name = "digits"

    def __init__(self, n: int = 32) -> None:
        self._examples = [Example(id=f"d{i}", prompt=f"{i}+{i}", reference=2 * i, env=self.name) for i in range(n)]

    def examples(self, split: str) -> list[Example]:
        return self._examples[:16] if split == "test" else self._examples[16:]

    def render_prompt(self, example: Example) -> str:
        return f"{example.prompt}\n"

    def reference_completion(self, example: Example) -> str:
        return f"<answer>{example.reference}</answer>"

    def verify(self, completion: str, example: Example) -> Score:
        share = sum(c.isdigit() for c in completion) / max(1, len(completion))
        return Score(share, {"format": float("<answer>" in completion)})


def make(cfg: object) -> DigitsEnv:
    return DigitsEnv()


class ImageDigitsEnv(DigitsEnv):
    """`DigitsEnv` whose examples each carry one small solid-colour image (exercises the vision path)."""

    name = "image_digits"

    def __init__(self, n: int = 32, size: int = 16) -> None:
        import numpy as np

        super().__init__(n)
        for i, ex in enumerate(self._examples):
            colour = np.array([(37 * i) % 256, (91 * i) % 256, (53 * i) % 256], dtype=np.uint8)
            ex.images = [np.broadcast_to(colour, (size, size, 3)).copy()]


def make_images(cfg: object) -> ImageDigitsEnv:
    return ImageDigitsEnv()
