"""Scenes: a few coloured shapes on a coarse grid, and their ground-truth object list.

A scene is a `grid` × `grid` board (default 3 × 3); each cell holds at most one object, so an object is named
by its cell and every claim about it can be checked. Rows count from the top (r1) and columns from the left (c1).
An object has a shape (circle, square, triangle), a colour (red, green, blue, yellow), a size (small, large) and
a cell. Generation is seeded by the caller's `random.Random`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object: its cell (1-based row from the top, column from the left) and attributes. Orders by cell."""

    row: int
    col: int
    shape: str
    colour: str
    size: str

    @property
    def cell(self) -> str:
        return f"r{self.row}c{self.col}"


Scene = tuple[SceneObject, ...]  # sorted by cell (reading order): the canonical ground truth


def make_scene(rng: random.Random, grid: int = 3, min_objects: int = 1, max_objects: int = 5) -> Scene:
    """Between `min_objects` and `max_objects` objects in distinct cells, attributes uniform and independent.

    >>> s = make_scene(random.Random(0))
    >>> 1 <= len(s) <= 5 and len({o.cell for o in s}) == len(s) and list(s) == sorted(s)
    True
    """
    if not 1 <= min_objects <= max_objects <= grid * grid:
        raise ValueError(f"scenes: need 1 <= min_objects <= max_objects <= {grid * grid}, "
                         f"got {min_objects}, {max_objects}")
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(1, grid + 1) for c in range(1, grid + 1)], n)
    objs = [SceneObject(r, c, rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)) for r, c in cells]
    return tuple(sorted(objs))


def perturb(rng: random.Random, scene: Scene, grid: int = 3) -> Scene:
    """`scene` with one perception error: an object dropped, an object added in a free cell, or one attribute
    of an object changed (each as possible), e.g. a wrong reading for the blindfolded reasoner to reason from.

    >>> s = make_scene(random.Random(1), min_objects=2)
    >>> t = perturb(random.Random(2), s)
    >>> t != s and list(t) == sorted(t) and abs(len(t) - len(s)) <= 1
    True
    """
    free = [(r, c) for r in range(1, grid + 1) for c in range(1, grid + 1) if all(o.cell != f"r{r}c{c}"
                                                                                 for o in scene)]
    kinds = [k for k, ok in (("drop", len(scene) > 1), ("add", bool(free)), ("change", bool(scene))) if ok]
    kind = rng.choice(kinds)
    objs = list(scene)
    if kind == "drop":
        objs.pop(rng.randrange(len(objs)))
    elif kind == "add":
        r, c = rng.choice(free)
        objs.append(SceneObject(r, c, rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)))
    else:
        i = rng.randrange(len(objs))
        attr, values = rng.choice((("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)))
        new = rng.choice([v for v in values if v != getattr(objs[i], attr)])
        objs[i] = dataclasses.replace(objs[i], **{attr: new})
    return tuple(sorted(objs))


__all__ = ["COLOURS", "SHAPES", "SIZES", "Scene", "SceneObject", "make_scene", "perturb"]
