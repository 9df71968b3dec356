"""Edit metrics on the shapes domain: background fidelity outside the edit, edit success, structure, PSNR."""
import numpy as np

from . import classify


def psnr(a, b, weight=None):
    """PSNR in dB of images in [0, 1], optionally over the pixels where weight > 0.5."""
    err = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean(-1)
    if weight is not None:
        keep = np.asarray(weight) > 0.5
        err = err[keep] if keep.any() else err
    return float(10 * np.log10(1.0 / max(err.mean(), 1e-10)))


def ssim(a, b, weight=None):
    """Mean SSIM (7x7 windows, per channel) over the pixels where weight > 0.5."""
    from skimage.metrics import structural_similarity
    _, full = structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), channel_axis=-1,
                                    data_range=1.0, full=True, win_size=7)
    full = full.mean(-1)
    if weight is not None and (np.asarray(weight) > 0.5).any():
        full = full[np.asarray(weight) > 0.5]
    return float(full.mean())


def edit_success(image, target_spec):
    """True when the classifier reads exactly the target scene's background and (shape, colour) objects."""
    pred = classify.classify(image)
    return classify.matches(pred, target_spec["background"],
                            [(o["shape"], o["color"]) for o in target_spec["objects"]])


MAX_SHIFT_PX = 3.0       # at 64 px; scaled with the image side
AREA_RANGE = (0.8, 1.25)  # object area / target area


def layout_check(image, target_spec):
    """Layout-aware edit success: the classifier must read the target's background and, for every target object,
    one object of the same shape and colour whose centre lies within MAX_SHIFT_PX (at 64 px) of the target's and
    whose area is within AREA_RANGE of it, and no other object. Objects the edit does not name are target objects
    too, so they must stay where they were at their size.

    Returns {"success", "shift" (px at 64 px, the largest over the target's objects), "area_ratio" (the ratio
    furthest from 1), "layout_ok" (shift <= 2 px and area in [0.9, 1.1], the colour-edit goal)}. Objects are
    paired by position (Hungarian, attribute mismatches cost extra), so shift and area are reported even when the
    attributes are wrong; a target object with no counterpart gives shift and ratio nan.
    """
    from scipy.optimize import linear_sum_assignment
    from . import dataset
    img = np.asarray(image, np.float32)
    size = img.shape[0]
    scale = 64.0 / size
    truth = classify.classify(dataset.render_scene(target_spec, size)[0])
    pred = classify.classify(img)
    want, got = truth["objects"], pred["objects"]
    shifts, ratios, attrs_ok = [], [], True
    if want and got:
        cost = np.array([[np.hypot(g["centre"][0] - w["centre"][0], g["centre"][1] - w["centre"][1])
                          + 1000.0 * ((g["shape"], g["color"]) != (w["shape"], w["color"])) for g in got]
                         for w in want])
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            w, g = want[r], got[c]
            attrs_ok &= (g["shape"], g["color"]) == (w["shape"], w["color"])
            shifts.append(scale * np.hypot(g["centre"][0] - w["centre"][0], g["centre"][1] - w["centre"][1]))
            ratios.append(g["area"] / max(w["area"], 1))
    complete = len(shifts) == len(want) == len(got)
    shift = max(shifts) if len(shifts) == len(want) and shifts else float("nan")
    ratio = max(ratios, key=lambda v: abs(np.log(v))) if len(ratios) == len(want) and ratios else float("nan")
    placed = complete and shift <= MAX_SHIFT_PX and AREA_RANGE[0] <= ratio <= AREA_RANGE[1]
    return {"success": bool(pred["background"] == truth["background"] and attrs_ok and placed),
            "shift": float(shift), "area_ratio": float(ratio),
            "layout_ok": bool(complete and shift <= 2.0 and 0.9 <= ratio <= 1.1)}


def object_iou(image, reference, background):
    """IoU of the foreground (pixels far from the background colour) of two images: structure preservation."""
    bg = np.asarray(classify._RGB[classify._NAMES.index(background)])
    fg = lambda im: np.sqrt(((np.asarray(im, np.float32) - bg) ** 2).sum(-1)) > 0.25
    a, b = fg(image), fg(reference)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
