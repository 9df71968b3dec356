"""MASK handling shared by every technique: validation, resizing to a latent or token grid."""
import comfy.model_base
import torch.nn.functional as F

from ..attention.token_masks import as_mask, resize, to_tokens  # noqa: F401  (defined on the ground floor)

PIXELS_PER_LATENT = 8  # the VAE downscale of SD1.x/2.x/SDXL/FLUX.1/Chroma latents
# Families whose latent cell covers more pixels: FLUX.2 packs 2x2 cells of its 32-channel VAE latent into one
# 128-channel cell (ComfyUI's latent_formats.Flux2).
PIXELS_PER_LATENT_BY_FAMILY = ((comfy.model_base.Flux2, 16),)


def pixels_per_latent(model):
    """Image pixels per latent cell (each side) for this MODEL: where a MASK at image size comes from a latent."""
    return next((n for cls, n in PIXELS_PER_LATENT_BY_FAMILY if isinstance(model.model, cls)), PIXELS_PER_LATENT)


def per_batch(mask, batch, name="mask"):
    """Expand a batch-1 mask to `batch` images; a clear error when the counts differ."""
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"{name}: it has {mask.shape[0]} masks but the latent batch is {batch}; give one mask or "
                         f"one per image")
    return mask.expand(batch, *mask.shape[1:])


def dilate(mask, radius=1):
    """Dilation of a mask [..., H, W] (per leading index) by a (2r+1)x(2r+1) square: max-pool, stride 1."""
    if radius <= 0:
        return mask
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    return F.max_pool2d(flat, 2 * radius + 1, stride=1, padding=radius).reshape(mask.shape)


def check_shape(mask, hw, what):
    """A clear error when a MASK's aspect ratio differs from the `what` ("image", "latent") of size hw it is for."""
    mh, mw = mask.shape[-2:]
    if mh * hw[1] != mw * hw[0]:
        raise ValueError(f"mask: it is {mh}x{mw} but the {what} is {hw[0]}x{hw[1]} (an image of another shape); "
                         f"give a mask of the edited image's size")


def box_blur(mask, radius):
    """Mean over a (2r+1)x(2r+1) window of a mask [B, 1, H, W], edges averaging only the cells inside."""
    return F.avg_pool2d(mask, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
