"""Procedural captioned-shapes domain: scene specs, exact rendering, captions, masks and a held-out split.

A scene spec is a plain dict, resolution independent (coordinates are fractions of the image side):
    {"background": "blue",
     "objects": [{"shape": "circle", "color": "red", "cx": 0.5, "cy": 0.4, "r": 0.2}, ...]}
Objects are drawn in list order (later ones on top). `render_scene(spec, size)` returns the image and the
exact per-object visible masks, so the edit benchmark can render a source and its edited target
(same spec with one object recoloured, reshaped, removed or added) as ground truth.
"""
import itertools

import numpy as np

PALETTE = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
SUPERSAMPLE = 4  # anti-aliasing: coverage is averaged over SUPERSAMPLE^2 sub-pixels

# Object radii (fraction of the image side) of each data version: (single object, each of two objects).
# Version 2 makes single objects span 3-5 cells of the 8x8 latent so their shape type survives the 8x
# downsampling (with version 1 the denoisers drew colour-correct blobs). Version 1 is kept for the first
# training stages, so the whole chain stays reproducible.
RADII = {1: ((0.13, 0.26), (0.1, 0.18)), 2: ((0.2, 0.33), (0.13, 0.2))}
DATA_VERSION = 2
SINGLE_RADIUS, PAIR_RADIUS = RADII[DATA_VERSION]

HELD_OUT_SEED = 1234
HELD_OUT_COUNT = 24


def _coverage(shape, cx, cy, r, size):
    """Fraction of each pixel covered by the shape, float32 [size, size]."""
    n = size * SUPERSAMPLE
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    y, x = t[:, None], t[None, :]
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "triangle":  # apex up, base at cy + r, base half-width r
        below_apex = y >= cy - r
        above_base = y <= cy + r
        half = (y - (cy - r)) / 2.0  # half-width grows from 0 at the apex to r at the base
        inside = below_apex & above_base & (np.abs(x - cx) <= half)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cov = inside.astype(np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return cov


def render_scene(spec, size=64):
    """Render a spec. Returns (image float32 [size,size,3] in [0,1], masks float32 [n_obj,size,size]).

    masks[i] is the visible coverage of object i (occlusion by later objects removed), exact up to
    the anti-aliasing; threshold at 0.5 for a binary mask."""
    bg = np.asarray(PALETTE[spec["background"]], np.float32) / 255.0
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    covs = []
    for obj in spec["objects"]:
        cov = _coverage(obj["shape"], obj["cx"], obj["cy"], obj["r"], size)
        col = np.asarray(PALETTE[obj["color"]], np.float32) / 255.0
        img = img * (1.0 - cov[..., None]) + col * cov[..., None]
        covs.append(cov)
    masks = []
    for i, cov in enumerate(covs):
        vis = cov.copy()
        for later in covs[i + 1:]:
            vis = vis * (1.0 - later)
        masks.append(vis)
    masks = np.stack(masks) if masks else np.zeros((0, size, size), np.float32)
    return img.astype(np.float32), masks


def object_bbox(obj, size=64):
    """Pixel bounding box (x0, y0, x1, y1), exclusive upper bounds, of an object of a spec."""
    lo = lambda c: int(np.floor((c - obj["r"]) * size))
    hi = lambda c: int(np.ceil((c + obj["r"]) * size))
    return (max(lo(obj["cx"]), 0), max(lo(obj["cy"]), 0), min(hi(obj["cx"]), size), min(hi(obj["cy"]), size))


def article(word):
    """'an' before a vowel sound, else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


def caption(spec):
    """'a red circle on a blue background' / 'a green square and a white triangle on a black background'."""
    parts = [f"{article(o['color'])} {o['color']} {o['shape']}" for o in spec["objects"]]
    things = " and ".join(parts) if parts else "nothing"
    return f"{things} on {article(spec['background'])} {spec['background']} background"


def labels(spec, size=64):
    """Attribute labels of a spec: background colour and per-object shape, colour, pixel bbox."""
    return {
        "background": spec["background"],
        "objects": [{"shape": o["shape"], "color": o["color"], "bbox": object_bbox(o, size)} for o in spec["objects"]],
    }


def all_triples():
    """Every (shape, colour, background) single-object combination (colour != background)."""
    return [(s, c, b) for s, c, b in itertools.product(SHAPES, COLORS, COLORS) if c != b]


def held_out_triples():
    """Fixed held-out (shape, colour, background) combos never shown in training; every attribute value
    still appears in training in other combos."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    triples = all_triples()
    order = rng.permutation(len(triples))
    return sorted(triples[i] for i in order[:HELD_OUT_COUNT])


def held_out_prompts():
    """Captions of the held-out single-object combos (the quality-gate prompts)."""
    return [caption({"background": b, "objects": [{"shape": s, "color": c}]}) for s, c, b in held_out_triples()]


def _random_object(rng, shape, color, r_range=SINGLE_RADIUS):
    r = float(rng.uniform(*r_range))
    cx = float(rng.uniform(r + 0.03, 1 - r - 0.03))
    cy = float(rng.uniform(r + 0.03, 1 - r - 0.03))
    return {"shape": shape, "color": color, "cx": cx, "cy": cy, "r": r}


def _overlaps(a, b, margin=0.03):
    return abs(a["cx"] - b["cx"]) < a["r"] + b["r"] + margin and abs(a["cy"] - b["cy"]) < a["r"] + b["r"] + margin


def random_spec(rng, two_prob=0.3, exclude=None, version=DATA_VERSION):
    """A random scene spec; `exclude` is a set of (shape, colour, background) triples that no object may form."""
    exclude = exclude or set()
    n_obj = 2 if rng.random() < two_prob else 1
    while True:
        bg = COLORS[rng.integers(len(COLORS))]
        objs = []
        for _ in range(n_obj):
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = COLORS[rng.integers(len(COLORS))]
            if color == bg or (shape, color, bg) in exclude:
                break
            r_range = RADII[version][0 if n_obj == 1 else 1]
            for _ in range(50):
                obj = _random_object(rng, shape, color, r_range)
                if not any(_overlaps(obj, o) for o in objs):
                    break
            else:
                break
            objs.append(obj)
        if len(objs) == n_obj:
            objs.sort(key=lambda o: o["cx"])  # captions name objects left to right
            return {"background": bg, "objects": objs}


def make_dataset(n, seed=0, size=64, two_prob=0.3, held_out=True, version=DATA_VERSION):
    """n training scenes: (images uint8 [n,size,size,3], captions list[str], specs list[dict]).

    Deterministic from the seed; with held_out=True no object forms a held-out triple."""
    rng = np.random.default_rng(seed)
    exclude = set(held_out_triples()) if held_out else set()
    images = np.empty((n, size, size, 3), np.uint8)
    captions, specs = [], []
    for i in range(n):
        spec = random_spec(rng, two_prob, exclude, version)
        img, _ = render_scene(spec, size)
        images[i] = np.round(img * 255.0).astype(np.uint8)
        captions.append(caption(spec))
        specs.append(spec)
    return images, captions, specs
