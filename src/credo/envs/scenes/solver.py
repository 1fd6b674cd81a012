"""The sandbox's own program: answer a `Question` from a list of objects, and explain the steps.

`solve` makes the references (on the ground truth) and is the `program` blindfolded reasoner of Perception
Verification (on the objects parsed from a completion's claims): it sees the claims, never the image. It is total
on any object list; where the list cannot answer the question (a named object missing or not unique) it returns
None, which never equals a reference.

Answers are typed: an `int` (count, arith), "yes" / "no" (compare, spatial, exists), a colour word (colour), a
`frozenset` of words (set).
"""

from __future__ import annotations

from collections.abc import Sequence

from credo.envs.scenes.questions import Filter, Question, related
from credo.envs.scenes.scene import SceneObject

Answer = int | str | frozenset[str]


def _matching(objects: Sequence[SceneObject], f: Filter | None) -> list[SceneObject]:
    return [o for o in objects if f is not None and f.matches(o)]


def _only(objects: Sequence[SceneObject], f: Filter | None) -> SceneObject | None:
    hits = _matching(objects, f)
    return hits[0] if len(hits) == 1 else None


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _colour_target(q: Question, objects: Sequence[SceneObject]) -> tuple[SceneObject | None, SceneObject | None]:
    ref = _only(objects, q.b)
    if ref is None:
        return None, None
    hits = [o for o in _matching(objects, q.a) if o != ref and related(o, q.relation, ref)]
    return ref, hits[0] if len(hits) == 1 else None


def solve(q: Question, objects: Sequence[SceneObject]) -> Answer | None:
    """The answer to `q` given `objects`, or None when they do not determine one.

    >>> from credo.envs.scenes.questions import Filter, Question
    >>> objs = [SceneObject(1, 1, "circle", "red", "large"), SceneObject(2, 3, "circle", "blue", "small")]
    >>> solve(Question("count", "How many circles?", a=Filter(shape="circle")), objs)
    2
    >>> solve(Question("set", "", a=Filter(shape="circle"), target="colour"), objs) == {"red", "blue"}
    True
    """
    try:
        n_a, n_b = len(_matching(objects, q.a)), len(_matching(objects, q.b))
        if q.family == "count":
            return n_a
        if q.family == "compare":
            return _yes(n_a > n_b)
        if q.family == "arith":
            return n_a + n_b if q.relation == "plus" else n_a - n_b
        if q.family == "spatial":
            x, y = _only(objects, q.a), _only(objects, q.b)
            return None if x is None or y is None else _yes(related(x, q.relation, y))
        if q.family == "colour":
            target = _colour_target(q, objects)[1]
            return None if target is None else target.colour
        if q.family == "set":
            return frozenset(getattr(o, q.target) for o in _matching(objects, q.a))
        if q.family == "exists":
            return _yes(n_a > 0)
    except Exception:  # total: an odd object list or question answers nothing
        return None
    return None


def format_answer(answer: Answer | None) -> str:
    """The answer as written in `<answer>`: "3", "yes", "blue", "blue, red" (sorted), "none" (empty set)."""
    if isinstance(answer, frozenset | set):
        return ", ".join(sorted(answer)) if answer else "none"
    return "unknown" if answer is None else str(answer)


def _cells(objects: Sequence[SceneObject]) -> str:
    return " ".join(o.cell for o in objects) or "none"


def explain(q: Question, objects: Sequence[SceneObject]) -> str:
    """A short reasoning trace from `objects` to the answer (the `<think>` of the reference completion).

    >>> from credo.envs.scenes.questions import Filter, Question
    >>> objs = [SceneObject(1, 1, "circle", "red", "large"), SceneObject(2, 3, "square", "red", "small")]
    >>> explain(Question("arith", "", a=Filter(colour="red"), b=Filter(colour="blue"), relation="minus"), objs)
    'red objects r1c1 r2c3 = 2; blue objects none = 0; 2 - 0 = 2'
    """
    ans = solve(q, objects)
    fa, fb = q.a or Filter(), q.b or Filter()
    a, b = _matching(objects, q.a), _matching(objects, q.b)
    if q.family in ("count", "exists"):
        name = fa.plural() if q.family == "count" else fa.singular()
        return f"{name} {_cells(a)} = {len(a)}" + (f"; {format_answer(ans)}" if q.family == "exists" else "")
    if q.family in ("compare", "arith"):
        head = f"{fa.plural()} {_cells(a)} = {len(a)}; {fb.plural()} {_cells(b)} = {len(b)}"
        if q.family == "compare":
            return f"{head}; {len(a)} > {len(b)} {format_answer(ans)}"
        sign = "+" if q.relation == "plus" else "-"
        return f"{head}; {len(a)} {sign} {len(b)} = {format_answer(ans)}"
    if q.family == "spatial":
        x, y = _only(objects, q.a), _only(objects, q.b)
        if x is None or y is None:
            return "cannot find both objects"
        axis = "c" if q.relation in ("left of", "right of") else "r"
        vx, vy = (x.col, y.col) if axis == "c" else (x.row, y.row)
        op = "<" if q.relation in ("left of", "above") else ">"
        return f"{fa.singular()} {x.cell}; {fb.singular()} {y.cell}; {axis}{vx} {op} {axis}{vy} {format_answer(ans)}"
    if q.family == "colour":
        ref, target = _colour_target(q, objects)
        if ref is None:
            return f"no single {fb.singular()}"
        hits = [o for o in a if o != ref and related(o, q.relation, ref)]
        listed = " ".join(f"{o.cell} {o.colour}" for o in hits) or "none"
        return f"{fb.singular()} {ref.cell}; {fa.plural()} {q.relation} it: {listed}"
    if q.family == "set":
        listed = " ".join(f"{o.cell} {getattr(o, q.target)}" for o in a) or "none"
        return f"{fa.plural()}: {listed}"
    return ""


__all__ = ["Answer", "explain", "format_answer", "solve"]
