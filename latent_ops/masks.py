"""MASK handling shared by every technique: validation, resizing to a latent or token grid."""
import torch
import torch.nn.functional as F


def as_mask(mask, name="mask"):
    """A ComfyUI MASK ([B, H, W] or [H, W]) as float [B, H, W] in [0, 1]; a clear error names the input."""
    if not torch.is_tensor(mask) or mask.ndim not in (2, 3) or min(mask.shape[-2:]) < 1:
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"{name}: expected a MASK of shape [batch, height, width], got {shape}")
    mask = mask[None] if mask.ndim == 2 else mask
    return mask.float().clamp(0, 1)


def resize(mask, size):
    """[B, H, W] -> [B, h, w]: area averaging when shrinking (soft edges), nearest when growing."""
    size = (int(size[0]), int(size[1]))
    if tuple(mask.shape[-2:]) == size:
        return mask.float()
    shrink = mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]
    return F.interpolate(mask.float()[:, None], size=size, mode="area" if shrink else "nearest")[:, 0]


def to_tokens(mask, grid):
    """[B, H, W] -> [B, h*w] on a token grid (h, w), image tokens in row-major order."""
    return resize(mask, grid).flatten(1)


def per_batch(mask, batch, name="mask"):
    """Expand a batch-1 mask to `batch` images; a clear error when the counts differ."""
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"{name}: it has {mask.shape[0]} masks but the latent batch is {batch}; give one mask or "
                         f"one per image")
    return mask.expand(batch, *mask.shape[1:])
