"""Masked attention through one explicit kernel, whatever attention backend ComfyUI selected.

The additive bias broadcasts as [B or 1, 1, Lq or 1, Lk] and is never expanded to [B, H, Lq, Lk]: PyTorch's
scaled_dot_product_attention takes it as it is (ComfyUI's global kernel may ignore a mask, fall back, or copy it
at full size, depending on the backend and release).
"""
import torch
import torch.nn.functional as F


def keep_any(keep):
    """keep [..., Lk] with an all-False row made all-True (an empty key set means every key), without a sync."""
    return keep | ~keep.any(dim=-1, keepdim=True)


def keep_bias(keep, dtype):
    """Additive bias [1, 1, 1, Lk] (keep [Lk]) or [B, 1, 1, Lk] (keep [B, Lk]): 0 where kept, -inf elsewhere."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))
    return bias.view(-1, 1, 1, keep.shape[-1]) if keep.ndim == 2 else bias.view(1, 1, 1, -1)


def as_4d(mask):
    """A ComfyUI attention mask [Lq, Lk], [B, Lq, Lk] or [B, H, Lq, Lk] as a 4-d view (heads 1 where absent)."""
    if mask.ndim == 2:
        return mask[None, None]
    return mask[:, None] if mask.ndim == 3 else mask


def as_bias(mask, dtype):
    """A ComfyUI attention mask (bool: True = attend; or additive; [Lq, Lk], [B, Lq, Lk] or 4-d) as a 4-d additive
    bias that broadcasts against [B, H, Lq, Lk] (heads dimension added as 1, nothing expanded)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return as_4d(mask.to(dtype))


def add_bias(a, b):
    """Sum of two additive biases (either may be None); broadcasting keeps the smallest shape."""
    if a is None or b is None:
        return a if b is None else b
    return a + b


def masked_attention(q, k, v, bias=None):
    """softmax(q k^T / sqrt(d) + bias) v for q [B, H, Lq, D], k, v [B, H, Lk, D]; bias broadcastable, or None."""
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
