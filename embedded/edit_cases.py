"""The fixed edit benchmark of the shapes domain: each case has a source scene, its ground-truth edited scene,
source and target prompts, the exact edit mask and the region that must stay unchanged."""
from dataclasses import dataclass

import numpy as np

from . import dataset


@dataclass
class EditCase:
    name: str
    kind: str          # colour, shape, background, removal, addition, two_object
    source: dict       # scene spec
    target: dict       # ground-truth edited scene spec
    word: str          # the source-prompt word naming what changes (for attention masks)
    target_word: str   # the target-prompt word naming the new content

    @property
    def source_prompt(self):
        return dataset.caption(self.source)

    @property
    def target_prompt(self):
        return dataset.caption(self.target)

    @property
    def instruction(self):
        """The edit as an instruction for the Learnable Region Mask, e.g. 'make the red circle yellow'."""
        return edit_instruction(self.source, self.target)

    def masks(self, size=64):
        """(edit mask, keep mask) as float arrays [size, size]: where the edit happens and what must not change."""
        _, src_masks = dataset.render_scene(self.source, size)
        _, tgt_masks = dataset.render_scene(self.target, size)
        if self.kind == "background":
            objects = np.clip(src_masks.sum(0), 0, 1)
            edit = 1.0 - dilate(objects > 0.05, 1).astype(np.float32)
            return edit, erode(objects > 0.5, 1).astype(np.float32)
        # an object changed when the other scene has no identical object (order-free: removal/addition of
        # the left object shifts the indices of the rest)
        changed = [m for o, m in zip(self.source["objects"], src_masks) if o not in self.target["objects"]]
        changed += [m for o, m in zip(self.target["objects"], tgt_masks) if o not in self.source["objects"]]
        edit = np.clip(np.sum(changed, axis=0), 0, 1) if changed else np.zeros((size, size), np.float32)
        return edit, 1.0 - dilate(edit > 0.05, 2).astype(np.float32)


def local_prompt(case):
    """What the edit mask should contain, as an inpainting user writes it: the target's new objects (none for a
    removal or a background) on its background."""
    kept = [(o["shape"], o["color"]) for o in case.source["objects"]]
    new = [o for o in case.target["objects"] if (o["shape"], o["color"]) not in kept]
    return dataset.caption({"background": case.target["background"], "objects": new})


def region_words(case):
    """The words of the local prompt that belong inside the mask: the new objects' colour and shape, else (a
    removal, a new background) the background's."""
    kept = [(o["shape"], o["color"]) for o in case.source["objects"]]
    new = [f"{o['color']} {o['shape']}" for o in case.target["objects"] if (o["shape"], o["color"]) not in kept]
    return " ".join(new) if new else f"{case.target['background']} background"


def edit_instruction(source, target):
    """A template instruction for the edit source scene -> target scene (the phrasings the region predictor was
    trained on, embedded/train_region_predictor.py): 'make the background green', 'make the red circle yellow',
    'turn the orange circle into a square', 'remove the square' (colour added when the shape is not unique),
    'add a yellow triangle'."""
    if source["background"] != target["background"]:
        return f"make the background {target['background']}"
    gone = [o for o in source["objects"] if o not in target["objects"]]
    new = [o for o in target["objects"] if o not in source["objects"]]
    if len(gone) == 1 and len(new) == 1:
        old, now = gone[0], new[0]
        if old["shape"] != now["shape"]:
            return f"turn the {old['color']} {old['shape']} into {dataset.article(now['shape'])} {now['shape']}"
        return f"make the {old['color']} {old['shape']} {now['color']}"
    if len(gone) == 1 and not new:
        o = gone[0]
        unique = sum(p["shape"] == o["shape"] for p in source["objects"]) == 1
        return f"remove the {o['shape']}" if unique else f"remove the {o['color']} {o['shape']}"
    if len(new) == 1 and not gone:
        o = new[0]
        return f"add {dataset.article(o['color'])} {o['color']} {o['shape']}"
    raise ValueError(f"no template instruction for this edit: {len(gone)} objects changed or removed, "
                     f"{len(new)} changed or added")


def dilate(mask, pixels):
    from scipy import ndimage
    return ndimage.binary_dilation(mask, iterations=pixels)


def erode(mask, pixels):
    from scipy import ndimage
    return ndimage.binary_erosion(mask, iterations=pixels)


def _obj(shape, color, cx=0.5, cy=0.5, r=0.22):
    return {"shape": shape, "color": color, "cx": cx, "cy": cy, "r": r}


def _scene(background, *objects):
    return {"background": background, "objects": list(objects)}


CASES = [
    EditCase("colour_red_to_yellow", "colour", _scene("blue", _obj("circle", "red")),
             _scene("blue", _obj("circle", "yellow")), "red", "yellow"),
    EditCase("colour_green_to_purple", "colour", _scene("white", _obj("square", "green", 0.45, 0.55, 0.2)),
             _scene("white", _obj("square", "purple", 0.45, 0.55, 0.2)), "green", "purple"),
    EditCase("shape_circle_to_square", "shape", _scene("black", _obj("circle", "orange")),
             _scene("black", _obj("square", "orange")), "circle", "square"),
    EditCase("background_blue_to_green", "background", _scene("blue", _obj("triangle", "white", 0.5, 0.5, 0.25)),
             _scene("green", _obj("triangle", "white", 0.5, 0.5, 0.25)), "blue", "green"),
    EditCase("removal_of_square", "removal",
             _scene("yellow", _obj("circle", "blue", 0.3, 0.5, 0.16), _obj("square", "red", 0.72, 0.5, 0.15)),
             _scene("yellow", _obj("circle", "blue", 0.3, 0.5, 0.16)), "square", "circle"),
    EditCase("addition_of_triangle", "addition", _scene("purple", _obj("circle", "white", 0.3, 0.5, 0.16)),
             _scene("purple", _obj("circle", "white", 0.3, 0.5, 0.16), _obj("triangle", "yellow", 0.72, 0.5, 0.16)),
             "circle", "triangle"),
    EditCase("two_objects_one_recoloured", "two_object",
             _scene("black", _obj("square", "green", 0.3, 0.5, 0.15), _obj("circle", "red", 0.72, 0.5, 0.16)),
             _scene("black", _obj("square", "green", 0.3, 0.5, 0.15), _obj("circle", "blue", 0.72, 0.5, 0.16)),
             "red", "blue"),
]
