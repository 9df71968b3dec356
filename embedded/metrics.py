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


def object_iou(image, reference, background):
    """IoU of the foreground (pixels far from the background colour) of two images: structure preservation."""
    bg = np.asarray(classify._RGB[classify._NAMES.index(background)])
    fg = lambda im: np.sqrt(((np.asarray(im, np.float32) - bg) ** 2).sum(-1)) > 0.25
    a, b = fg(image), fg(reference)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
