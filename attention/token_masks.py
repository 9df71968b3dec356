"""MASKs on attention token grids: validation, resizing, and the per-run cache of resized masks on the device."""
import torch
import torch.nn.functional as F

TOKENS_KEY = "token_masks"


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


def pick(mask_tokens, index):
    """Row `index` of a [B, n] per-image mask (a batch-1 mask applies to every image)."""
    return mask_tokens[index if mask_tokens.shape[0] > 1 else 0]


def tokens_on(mask, grid, device, dtype, store=None):
    """to_tokens(mask, grid) on `device` in `dtype`, resized there; cached in `store` (a run's store) per
    (mask, grid, device, dtype), so a run copies a MASK to the device once and attention calls reuse it."""
    key = (id(mask), tuple(grid), torch.device(device), dtype)
    cache = store.setdefault(TOKENS_KEY, {}) if store is not None else {}
    hit = cache.get(key)
    if hit is not None and hit[0] is mask:
        return hit[1]
    on_device = cache.get((id(mask), None, torch.device(device)))
    if on_device is None or on_device[0] is not mask:
        on_device = cache[(id(mask), None, torch.device(device))] = (mask, mask.to(device, torch.float32))
    tokens = to_tokens(on_device[1], grid).to(dtype)
    cache[key] = (mask, tokens)
    return tokens
