"""Procedural edit cases: the fixed benchmark cases plus seeded random cases of every kind.

Seven hand-written cases quantise each rate to 1/7; the generated cases (same kinds, random colours, shapes,
sizes and positions, deterministic from the seed) make the per-method means less dependent on any one scene.
Every generated case keeps the words it needs unique in its prompts (the edited object's colour/shape word is
not shared with the other object or the background), so attention masks can locate them.
"""
import numpy as np

from . import dataset
from .edit_cases import CASES, EditCase

KINDS = ("colour", "shape", "background", "removal", "addition", "two_object")


def _pick(rng, options, avoid=()):
    return str(rng.choice([o for o in options if o not in avoid]))


def _single(rng, shape, color):
    return dataset._random_object(rng, shape, color, dataset.SINGLE_RADIUS)


def _pair(rng, first, second):
    """Two non-overlapping pair-sized objects, left to right; first/second are (shape, colour)."""
    while True:
        a = dataset._random_object(rng, *first, dataset.PAIR_RADIUS)
        b = dataset._random_object(rng, *second, dataset.PAIR_RADIUS)
        if not dataset._overlaps(a, b) and abs(a["cx"] - b["cx"]) > 0.05:
            return sorted([a, b], key=lambda o: o["cx"])


def _case(rng, kind, index):
    bg = _pick(rng, dataset.COLORS)
    shape, color = _pick(rng, dataset.SHAPES), _pick(rng, dataset.COLORS, {bg})
    name = f"gen_{kind}_{index}"
    if kind == "colour":
        obj = _single(rng, shape, color)
        new = _pick(rng, dataset.COLORS, {bg, color})
        return EditCase(name, kind, {"background": bg, "objects": [obj]},
                        {"background": bg, "objects": [dict(obj, color=new)]}, color, new)
    if kind == "shape":
        obj = _single(rng, shape, color)
        new = _pick(rng, dataset.SHAPES, {shape})
        return EditCase(name, kind, {"background": bg, "objects": [obj]},
                        {"background": bg, "objects": [dict(obj, shape=new)]}, shape, new)
    if kind == "background":
        obj = _single(rng, shape, color)
        new = _pick(rng, dataset.COLORS, {bg, color})
        return EditCase(name, kind, {"background": bg, "objects": [obj]},
                        {"background": new, "objects": [obj]}, bg, new)
    other = (_pick(rng, dataset.SHAPES, {shape}), _pick(rng, dataset.COLORS, {bg, color}))
    objs = _pair(rng, (shape, color), other)
    if kind == "removal":  # remove one of the two (the word is its shape, unique in the prompt)
        gone = int(rng.integers(2))
        return EditCase(name, kind, {"background": bg, "objects": objs},
                        {"background": bg, "objects": [objs[1 - gone]]}, objs[gone]["shape"], objs[1 - gone]["shape"])
    if kind == "addition":  # the source has one of the two; the target adds the other
        keep = int(rng.integers(2))
        return EditCase(name, kind, {"background": bg, "objects": [objs[keep]]},
                        {"background": bg, "objects": objs}, objs[keep]["shape"], objs[1 - keep]["shape"])
    if kind == "two_object":  # recolour one of the two; the other must not change
        which = int(rng.integers(2))
        old = objs[which]["color"]
        new = _pick(rng, dataset.COLORS, {bg, objs[0]["color"], objs[1]["color"]})
        target = [dict(o, color=new) if i == which else o for i, o in enumerate(objs)]
        return EditCase(name, kind, {"background": bg, "objects": objs}, {"background": bg, "objects": target},
                        old, new)
    raise ValueError(f"kind must be one of {KINDS}, got '{kind}'")


def generated_cases(per_kind=2, seed=2026):
    """per_kind random cases of every kind, deterministic from the seed."""
    rng = np.random.default_rng(seed)
    return [_case(rng, kind, i) for i in range(per_kind) for kind in KINDS]


def benchmark_cases(per_kind=2, seed=2026):
    """The fixed cases followed by the generated ones."""
    return list(CASES) + generated_cases(per_kind, seed)
