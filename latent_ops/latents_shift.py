"""ProEdit Latents-Shift: masked per-channel AdaIN of the inverted noise towards seeded Gaussian noise.

z~ = std(R) * (z - mean(z)) / std(z) + mean(R), statistics per image and channel over the masked positions
(weighted by the mask; std = sqrt(var + eps)); z_hat = lerp(z, z~, beta * M), so positions with M = 0 keep z
exactly and beta = 0 is the identity.
"""
import torch
from .blend import broadcast_to_latent
from .masks import resize

EPS = 1e-5


def masked_stats(x, m, eps=EPS):
    """Mask-weighted mean and std per image and channel: x [B, C, H, W], m [B, 1, H, W] -> [B, C, 1, 1] each."""
    total = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    mean = (x * m).sum(dim=(-2, -1), keepdim=True) / total
    var = (((x - mean) ** 2) * m).sum(dim=(-2, -1), keepdim=True) / total
    return mean, (var + eps).sqrt()


def seeded_noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def latents_shift(z, mask, beta=0.25, seed=0, eps=EPS):
    """Shift the masked region of z [B, C, H, W] towards seeded noise; mask [B or 1, H', W'] at any size."""
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if mask.shape[0] not in (1, z.shape[0]):
        raise ValueError(f"mask: it has batch {mask.shape[0]}, the inversion {z.shape[0]}; give one mask or one "
                         f"per image")
    m = resize(mask, z.shape[-2:])[:, None].to(z.device).expand(z.shape[0], 1, *z.shape[-2:])
    m = broadcast_to_latent(m, z)  # Qwen-Image: [B, C, T, H, W]
    zf = z.float()
    r = seeded_noise(tuple(z.shape), seed).to(zf.device)
    mean_z, std_z = masked_stats(zf, m, eps)
    mean_r, std_r = masked_stats(r, m, eps)
    shifted = std_r * (zf - mean_z) / std_z + mean_r
    return torch.lerp(zf, shifted, float(beta) * m).to(z.dtype)
