"""MASK handling shared by every technique: validation, resizing to a latent or token grid."""
from ..attention.token_masks import as_mask, resize, to_tokens  # noqa: F401  (defined on the ground floor)


def per_batch(mask, batch, name="mask"):
    """Expand a batch-1 mask to `batch` images; a clear error when the counts differ."""
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"{name}: it has {mask.shape[0]} masks but the latent batch is {batch}; give one mask or "
                         f"one per image")
    return mask.expand(batch, *mask.shape[1:])
