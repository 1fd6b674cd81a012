"""Perception claims: what the policy says it sees, in a grammar that can be checked against the ground truth.

Grammar (one claim per object, claims separated by `;`, `,` or a newline):

    claims := "none" | claim (";" claim)*
    claim  := size colour shape "r" row "c" col        e.g.  large red circle r1c2

`format_claims` writes exactly this, in reading order (by cell), joined by "; ". `parse_claims` is lenient about
order and filler: the words of a claim may come in any order, "at", "in", "cell", "a", "an", "the" are ignored,
and a cell may be written "r1c2" or "r1 c2"; a claim is malformed when it lacks one of size, colour, shape and cell
or has one twice, holds an unknown word, or names a cell outside the grid. "none" / "nothing" / "no objects"
(alone) is the empty list. Malformed claims are dropped and counted; they lower precision.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from credo.envs.blocks import block_contents
from credo.envs.scenes.scene import COLOURS, SHAPES, SIZES, SceneObject

MAX_CLAIM_CHARS = 4_000  # perception text beyond this is ignored
FILLER = {"at", "in", "cell", "a", "an", "the", "is", "object"}
EMPTY = {"none", "nothing", "no objects", "empty"}
_SPLIT = re.compile(r"[;,\n]")
_CELL = re.compile(r"r(\d+)\s*c(\d+)")


def format_claim(o: SceneObject) -> str:
    return f"{o.size} {o.colour} {o.shape} {o.cell}"


def format_claims(objects: Sequence[SceneObject]) -> str:
    """The canonical claims text.

    >>> format_claims([SceneObject(2, 3, "square", "blue", "small"), SceneObject(1, 2, "circle", "red", "large")])
    'large red circle r1c2; small blue square r2c3'
    >>> format_claims([])
    'none'
    """
    return "; ".join(format_claim(o) for o in sorted(objects)) if objects else "none"


def parse_claim(text: str, grid: int = 3) -> SceneObject | None:
    """One claim, or None when it is malformed."""
    text = text.lower()
    cells = _CELL.findall(text)
    if len(cells) != 1:
        return None
    row, col = int(cells[0][0]), int(cells[0][1])
    if not (1 <= row <= grid and 1 <= col <= grid):
        return None
    found: dict[str, list[str]] = {"shape": [], "colour": [], "size": []}
    for w in _CELL.sub(" ", text).split():
        if w in SHAPES:
            found["shape"].append(w)
        elif w in COLOURS:
            found["colour"].append(w)
        elif w in SIZES:
            found["size"].append(w)
        elif w not in FILLER:
            return None
    if any(len(v) != 1 for v in found.values()):
        return None
    return SceneObject(row, col, found["shape"][0], found["colour"][0], found["size"][0])


def parse_claims(text: str, grid: int = 3) -> tuple[list[SceneObject], int]:
    """(objects claimed, number of malformed claims); total on any string.

    >>> parse_claims("large red circle r1c2; small blue square at r2 c3;; purple blob r9c9")
    ([SceneObject(row=1, col=2, shape='circle', colour='red', size='large'), \
SceneObject(row=2, col=3, shape='square', colour='blue', size='small')], 1)
    >>> parse_claims(" None ")
    ([], 0)
    """
    text = str(text)[:MAX_CLAIM_CHARS]
    if text.strip().strip(".").lower() in EMPTY:
        return [], 0
    objects, bad = [], 0
    for part in _SPLIT.split(text):
        part = part.strip().strip(".")
        if not part:
            continue
        o = parse_claim(part, grid)
        if o is None:
            bad += 1
        else:
            objects.append(o)
    return objects, bad


def perception_text(completion: str) -> str | None:
    """All `<perception>` blocks of a completion joined by newlines, or None when it has none."""
    blocks = block_contents(completion, "perception")
    return "\n".join(blocks) if blocks else None


def claim_scores(claimed: Sequence[SceneObject], n_malformed: int, truth: Sequence[SceneObject]) -> tuple[float, float]:
    """(precision, recall) of claims against the ground truth, matched as multisets of whole objects.

    precision = matched / (claims made, malformed included); recall = matched / true objects. With no claims at
    all precision is 0 (1 when the truth is empty too); with no true objects recall is 1.

    >>> t = [SceneObject(1, 1, "circle", "red", "large"), SceneObject(1, 2, "square", "blue", "small")]
    >>> claim_scores([t[0], SceneObject(3, 3, "circle", "red", "large")], 1, t)
    (0.3333333333333333, 0.5)
    """
    matched = sum((Counter(claimed) & Counter(truth)).values())
    made = len(claimed) + n_malformed
    precision = matched / made if made else float(not truth)
    recall = matched / len(truth) if truth else 1.0
    return precision, recall


__all__ = ["claim_scores", "format_claim", "format_claims", "parse_claim", "parse_claims", "perception_text"]
