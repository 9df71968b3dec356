"""MASK handling shared by every technique: validation, resizing to a latent or token grid."""
import comfy.model_base

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
