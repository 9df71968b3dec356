"""Exact attribute classifier for the shapes domain: background colour, objects' colours and shape types.

Works on any RGB image of the domain (ground truth, VAE reconstruction, or a sample): background = nearest
palette colour to the median border pixel; objects = connected regions far from the background colour;
object colour = nearest palette colour to the median of its interior pixels; shape type from geometry
(best IoU with each ideal shape fitted to the region's bounding box).
"""
import numpy as np
from scipy import ndimage

from . import dataset

_NAMES = list(dataset.PALETTE)
_RGB = np.asarray([dataset.PALETTE[n] for n in _NAMES], np.float32) / 255.0


def nearest_colour(rgb):
    """Palette name nearest (Euclidean RGB) to an RGB triple in [0,1]."""
    return _NAMES[int(np.argmin(((_RGB - np.asarray(rgb, np.float32)) ** 2).sum(-1)))]


def shape_type(mask):
    """'square' / 'circle' / 'triangle': the ideal shape fitted to the mask's bounding box with the best IoU."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy = (x0 + x1) / 2.0 / size, (y0 + y1) / 2.0 / size
    r = max(x1 - x0, y1 - y0) / 2.0 / size
    best, best_iou = None, -1.0
    for shape in dataset.SHAPES:
        tmpl = dataset._coverage(shape, cx, cy, r, size) > 0.5
        iou = (tmpl & mask).sum() / float((tmpl | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def classify(image, min_area=12, threshold=0.25):
    """image: float [H,W,3] in [0,1]. Returns {"background": name, "objects": [{shape, color, bbox, area, centre}]}
    with objects ordered left to right (as captions name them)."""
    img = np.asarray(image, np.float32)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3),
                             img[:, -2:].reshape(-1, 3)])
    bg_name = nearest_colour(np.median(border, axis=0))
    bg = _RGB[_NAMES.index(bg_name)]
    fg = np.sqrt(((img - bg) ** 2).sum(-1)) > threshold
    lab, n = ndimage.label(fg)
    objects = []
    for i in range(1, n + 1):
        m = lab == i
        area = int(m.sum())
        if area < min_area:
            continue
        inner = ndimage.binary_erosion(m, iterations=1)
        pix = img[inner] if inner.sum() >= 4 else img[m]
        ys, xs = np.nonzero(m)
        objects.append({"shape": shape_type(m), "color": nearest_colour(np.median(pix, axis=0)),
                        "bbox": (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), "area": area,
                        "centre": (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)})
    objects.sort(key=lambda o: (o["bbox"][0] + o["bbox"][2]) / 2)
    return {"background": bg_name, "objects": objects}


def matches(pred, background, objects):
    """True when pred has this background and exactly these (shape, colour) objects (in any order)."""
    if pred["background"] != background:
        return False
    return sorted((o["shape"], o["color"]) for o in pred["objects"]) == sorted(objects)


def parse_caption(text):
    """('blue', [('circle', 'red'), ...]) from a domain caption; None if it is not one."""
    words = text.lower().replace(",", " ").split()
    if "on" not in words or words[-1] != "background":
        return None
    cut = len(words) - 1 - words[::-1].index("on")
    background = words[-2]
    objs, i, head = [], 0, words[:cut]
    while i < len(head):
        if head[i] in dataset.PALETTE and i + 1 < len(head) and head[i + 1] in dataset.SHAPES:
            objs.append((head[i + 1], head[i]))
            i += 2
        else:
            i += 1
    return background, objs
