"""Paste the source back outside the mask, in pixel space: out = m * edited + (1 - m) * source.

Latent blending (Keep Outside Mask) can keep the outside only as well as the VAE reconstructs it; pasting the
source pixels makes it exact. The mask is resized to the image, grown by `grow` pixels, and feathered by `feather`
pixels *inward* (a soft edge inside the grown mask), so every pixel outside the grown mask is the source's own.
"""
from .blend import resize_mask
from .masks import box_blur, check_shape, dilate


def paste_mask(mask, hw, batch, grow=0, feather=0):
    """A ComfyUI MASK -> [batch, h, w, 1] at image size: 1 keeps the edit, 0 takes the source."""
    check_shape(mask, hw, "image")
    m = dilate(resize_mask(mask, hw, batch).clamp(0, 1), grow)
    if feather > 0:  # 1 - blur(1 - m) <= m: the edge softens inward only
        outside = box_blur(1 - m, feather)
        m = m.minimum(1 - outside)
    return m.movedim(1, -1)


def paste_outside(image, source, mask, grow=0, feather=0):
    """image, source: ComfyUI IMAGEs [B, H, W, C] (source batch 1 or B); the composite as an IMAGE."""
    if grow < 0 or feather < 0:
        raise ValueError("grow and feather must be 0 or more")
    if source.shape[1:] != image.shape[1:]:
        raise ValueError(f"source: it is {tuple(source.shape[1:3])} (H, W) with {source.shape[-1]} channels but the "
                         f"edited image is {tuple(image.shape[1:3])} with {image.shape[-1]}; give the image that was "
                         f"edited (before any resize)")
    if source.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"source: {source.shape[0]} images for {image.shape[0]} edited images; give one or one per "
                         f"edited image")
    m = paste_mask(mask.to(image.device), image.shape[1:3], image.shape[0], grow, feather).to(image.dtype)
    return m * image + (1 - m) * source.to(image)
