"""The benchmark's edit suite: the fixed cases plus layout-varied cases of every kind, deterministic from a seed.

Every kind gets the same layouts: objects in corners and at edges (as far out as the dataset places them), the
smallest and largest sizes the dataset draws, two-object scenes (side by side, diagonal, stacked, mixed sizes)
and seeded random placements. A layout-blind method that re-centres or resizes objects fails these cases.
Every case keeps the words it needs unique in its prompts (the edited object's colour/shape word is not shared
with the other object or the background), so attention masks can locate them.
"""
import dataclasses

import numpy as np

from . import dataset
from .edit_cases import CASES, EditCase

KINDS = ("colour", "shape", "background", "removal", "addition", "two_object")
PAIR_KINDS = ("removal", "addition", "two_object")
MARGIN = 0.03  # the dataset keeps objects this far (fraction of the side) from the image edge
S_MIN, S_MAX = dataset.SINGLE_RADIUS
P_MIN, P_MAX = dataset.PAIR_RADIUS


def _near(r):
    return r + MARGIN


def _far(r):
    return 1.0 - r - MARGIN


def _random_pair(rng):
    while True:
        a, b = (dataset._random_object(rng, "circle", "red", dataset.PAIR_RADIUS) for _ in range(2))
        if not dataset._overlaps(a, b) and abs(a["cx"] - b["cx"]) > 0.05:
            return [(o["cx"], o["cy"], o["r"]) for o in (a, b)]


def _random_single(rng):
    o = dataset._random_object(rng, "circle", "red", dataset.SINGLE_RADIUS)
    return [(o["cx"], o["cy"], o["r"])]


# Layouts: name -> rng -> [(cx, cy, r), ...]. Stacked pairs keep a small horizontal offset: captions name
# objects left to right, so the order must be defined.
SINGLE_LAYOUTS = {
    "corner_small": lambda rng: [(_near(S_MIN), _near(S_MIN), S_MIN)],
    "corner_large": lambda rng: [(_far(S_MAX), _far(S_MAX), S_MAX)],
    "edge": lambda rng: [(_far(S_MIN), 0.5, S_MIN)],
    "pair_diagonal": lambda rng: [(_near(P_MIN), _near(P_MIN), P_MIN), (_far(P_MAX), _far(P_MAX), P_MAX)],
    "pair_stacked": lambda rng: [(0.42, _near(P_MAX), P_MAX), (0.58, _far(P_MAX), P_MAX)],
}
PAIR_LAYOUTS = {
    "corners_small": lambda rng: [(_near(P_MIN), _near(P_MIN), P_MIN), (_far(P_MIN), _far(P_MIN), P_MIN)],
    "corners_large": lambda rng: [(_near(P_MAX), _far(P_MAX), P_MAX), (_far(P_MAX), _near(P_MAX), P_MAX)],
    "stacked": lambda rng: [(0.42, _near(P_MAX), P_MAX), (0.58, _far(P_MAX), P_MAX)],
    "top_edge": lambda rng: [(_near(P_MIN), _near(P_MIN), P_MIN), (_far(P_MAX), _near(P_MAX), P_MAX)],
    "mixed_sizes": lambda rng: [(_near(P_MAX), 0.5, P_MAX), (_far(P_MIN), _far(P_MIN), P_MIN)],
}


def layout(rng, kind, variant):
    """(name, geometry) of layout `variant` for `kind`: the named layouts first, then seeded random ones."""
    named = PAIR_LAYOUTS if kind in PAIR_KINDS else SINGLE_LAYOUTS
    if variant < len(named):
        name = list(named)[variant]
        return name, named[name](rng)
    return f"random{variant}", (_random_pair(rng) if kind in PAIR_KINDS else _random_single(rng))


def _scene(rng, geometry):
    """A background and objects at `geometry` with distinct shapes and distinct colours, none the background's."""
    bg = str(rng.choice(dataset.COLORS))
    shapes = [str(s) for s in rng.choice(dataset.SHAPES, len(geometry), replace=False)]
    colours = [str(c) for c in rng.choice([c for c in dataset.COLORS if c != bg], len(geometry), replace=False)]
    objs = [{"shape": s, "color": c, "cx": float(x), "cy": float(y), "r": float(r)}
            for s, c, (x, y, r) in zip(shapes, colours, geometry)]
    return bg, sorted(objs, key=lambda o: o["cx"])


def _pick(rng, options, avoid):
    return str(rng.choice([o for o in options if o not in avoid]))


def _case(rng, kind, variant):
    name, geometry = layout(rng, kind, variant)
    bg, objs = _scene(rng, geometry)
    name = f"layout_{kind}_{variant}_{name}"
    used = {bg} | {o["color"] for o in objs}
    which = variant % len(objs)
    edited = objs[which]
    src = {"background": bg, "objects": objs}
    if kind == "background":
        new = _pick(rng, dataset.COLORS, used)
        return EditCase(name, kind, src, {"background": new, "objects": objs}, bg, new)
    if kind in ("colour", "two_object"):
        new = _pick(rng, dataset.COLORS, used)
        target = [dict(o, color=new) if i == which else o for i, o in enumerate(objs)]
        return EditCase(name, kind, src, {"background": bg, "objects": target}, edited["color"], new)
    if kind == "shape":
        new = _pick(rng, dataset.SHAPES, {o["shape"] for o in objs})
        target = [dict(o, shape=new) if i == which else o for i, o in enumerate(objs)]
        return EditCase(name, kind, src, {"background": bg, "objects": target}, edited["shape"], new)
    other = objs[1 - which]
    if kind == "removal":  # the word is the removed object's shape, unique in the prompt
        return EditCase(name, kind, src, {"background": bg, "objects": [other]}, edited["shape"], other["shape"])
    if kind == "addition":  # the source has the other object; the target adds the edited one
        return EditCase(name, kind, {"background": bg, "objects": [other]}, src, other["shape"], edited["shape"])
    raise ValueError(f"kind must be one of {KINDS}, got '{kind}'")


SEED = 2026  # the benchmark's cases; another seed gives a tuning set (its case names say the seed)


def layout_cases(per_kind=6, seed=SEED):
    """per_kind cases of every kind (the named layouts, then seeded random ones), deterministic from the seed."""
    rng = np.random.default_rng(seed)
    cases = [_case(rng, kind, v) for v in range(per_kind) for kind in KINDS]
    if seed != SEED:
        cases = [dataclasses.replace(c, name=f"{c.name}_seed{seed}") for c in cases]
    return cases


def benchmark_cases(per_kind=6, seed=SEED):
    """The fixed cases followed by the layout cases."""
    return list(CASES) + layout_cases(per_kind, seed)
