"""Question families over a scene: each needs seeing (which objects are there) and thinking (what follows).

| family  | example                                          | answer type |
|---------|--------------------------------------------------|-------------|
| count   | How many red circles?                            | number      |
| compare | Are there more circles than squares?             | yes/no      |
| arith   | How many red objects plus blue objects?          | number (a difference may be negative) |
| spatial | Is the red circle left of the blue square?       | yes/no      |
| colour  | What colour is the square above the red circle?  | colour word |
| set     | Which colours do the circles have?               | set (may be empty: "none") |
| exists  | Is there a large green triangle?                 | yes/no      |

Relations compare cells: "left of" = column strictly smaller (any row), "right of" = larger; "above" = row
strictly smaller (any column), "below" = larger. A spatial or colour question names its reference objects by
colour and shape, chosen unique in the scene, and a colour question's target is the only object of its shape in
that relation. Group descriptions (count, compare, arith, set) are mostly (`PRESENT`) read off an object of the
scene, so that most counts and sets are not empty. A question is a `Question` record (the family and its
arguments); `solver.solve` answers it from an object list, so the text is for the policy only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from credo.envs.scenes.scene import COLOURS, SHAPES, SIZES, Scene, SceneObject

FAMILIES = ("count", "compare", "arith", "spatial", "colour", "set", "exists")
RELATIONS = ("left of", "right of", "above", "below")
ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}
PRESENT = 0.8  # how often a group description is taken from an object of the scene (else drawn at random)


@dataclass(frozen=True)
class Filter:
    """A description of objects: each given attribute must match (None = any)."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None

    def matches(self, o: SceneObject) -> bool:
        return all(v is None or getattr(o, k) == v for k, v in self._items())

    def _items(self) -> list[tuple[str, str | None]]:
        return [("colour", self.colour), ("shape", self.shape), ("size", self.size)]

    def singular(self) -> str:
        """ "large red circle", "red object"."""
        return " ".join(w for w in (self.size, self.colour, self.shape or "object") if w)

    def plural(self) -> str:
        """ "large red circles", "red objects"."""
        return self.singular() + "s"


@dataclass(frozen=True)
class Question:
    """A question's family and arguments; `text` is what the policy reads."""

    family: str
    text: str
    a: Filter | None = None  # the objects counted / compared / asked about
    b: Filter | None = None  # the second group (compare, arith) or the reference object (spatial, colour)
    relation: str = ""  # arith: "plus" | "minus"; spatial, colour: one of RELATIONS
    target: str = ""  # set: the attribute listed, "colour" or "shape"


def related(o: SceneObject, relation: str, ref: SceneObject) -> bool:
    """Whether `o` is `relation` `ref` (see the module docstring)."""
    if relation == "left of":
        return o.col < ref.col
    if relation == "right of":
        return o.col > ref.col
    if relation == "above":
        return o.row < ref.row
    if relation == "below":
        return o.row > ref.row
    raise ValueError(f"unknown relation {relation!r}")


def unique_by_name(scene: Scene) -> list[SceneObject]:
    """Objects whose colour and shape no other object shares (they can be named "the red circle")."""
    return [o for o in scene if sum(1 for p in scene if (p.colour, p.shape) == (o.colour, o.shape)) == 1]


def _name(o: SceneObject) -> Filter:
    return Filter(colour=o.colour, shape=o.shape)


def _group_filter(rng: random.Random, scene: Scene, kinds: tuple[str, ...]) -> Filter:
    """A group description; mostly taken from an object of the scene, so that most counts are not 0."""
    kind = rng.choice(kinds)
    o = rng.choice(scene) if rng.random() < PRESENT else None
    return Filter(**{k: getattr(o, k) if o is not None else rng.choice(ATTRIBUTES[k]) for k in kind.split("+")})


def _pair(rng: random.Random, scene: Scene) -> tuple[Filter, Filter]:
    """Two groups differing in one attribute (circles vs squares, red vs blue objects), in random order."""
    attr = rng.choice(tuple(ATTRIBUTES))
    v = getattr(rng.choice(scene), attr) if rng.random() < PRESENT else rng.choice(ATTRIBUTES[attr])
    w = rng.choice([x for x in ATTRIBUTES[attr] if x != v])
    pair = [Filter(**{attr: v}), Filter(**{attr: w})]
    rng.shuffle(pair)
    return pair[0], pair[1]


def make_question(rng: random.Random, family: str, scene: Scene) -> Question | None:
    """A question of `family` about `scene`, or None when the scene cannot support one (retry another scene)."""
    if family == "count":
        a = _group_filter(rng, scene, ("colour", "shape", "size", "colour+shape", "size+shape"))
        return Question(family, f"How many {a.plural()}?", a=a)
    if family == "compare":
        a, b = _pair(rng, scene)
        return Question(family, f"Are there more {a.plural()} than {b.plural()}?", a=a, b=b)
    if family == "arith":
        a, b = _pair(rng, scene)
        op = rng.choice(("plus", "minus"))
        return Question(family, f"How many {a.plural()} {op} {b.plural()}?", a=a, b=b, relation=op)
    if family == "spatial":
        named = unique_by_name(scene)
        if len(named) < 2:
            return None
        x, y = rng.sample(named, 2)
        rel = rng.choice(RELATIONS)
        return Question(family, f"Is the {_name(x).singular()} {rel} the {_name(y).singular()}?",
                        a=_name(x), b=_name(y), relation=rel)
    if family == "colour":
        options = []
        for ref in unique_by_name(scene):
            for rel in RELATIONS:
                for shape in SHAPES:
                    hits = [o for o in scene if o != ref and o.shape == shape and related(o, rel, ref)]
                    if len(hits) == 1:
                        options.append((ref, rel, shape))
        if not options:
            return None
        ref, rel, shape = rng.choice(options)
        return Question(family, f"What colour is the {shape} {rel} the {_name(ref).singular()}?",
                        a=Filter(shape=shape), b=_name(ref), relation=rel)
    if family == "set":
        if rng.random() < 0.5:
            a = _group_filter(rng, scene, ("shape",))
            return Question(family, f"Which colours do the {a.plural()} have?", a=a, target="colour")
        a = _group_filter(rng, scene, ("colour",))
        return Question(family, f"Which shapes are {a.colour}?", a=a, target="shape")
    if family == "exists":
        if rng.random() < 0.5:  # half about an object that is there (the other half exists by chance)
            o = rng.choice(scene)
            a = Filter(colour=o.colour, shape=o.shape, size=o.size)
        else:
            a = Filter(colour=rng.choice(COLOURS), shape=rng.choice(SHAPES), size=rng.choice(SIZES))
        return Question(family, f"Is there a {a.singular()}?", a=a)
    raise ValueError(f"scenes: unknown question family {family!r}; available: {', '.join(FAMILIES)}")


__all__ = ["FAMILIES", "RELATIONS", "Filter", "Question", "make_question", "related", "unique_by_name"]
