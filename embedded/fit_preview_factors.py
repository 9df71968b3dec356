"""Fit the embedded latent space's preview factors: the least-squares linear map from a latent cell (4 channels,
plus a bias) to the mean colour of its 8x8 pixels, in ComfyUI's preview range [-1, 1]. Prints the constants that
embedded/architectures.py ships (PREVIEW_RGB_FACTORS, PREVIEW_RGB_BIAS).

    .venv/bin/python embedded/fit_preview_factors.py
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fit(images=256, seed=0):
    from harness import runtime
    runtime.boot()
    from embedded import dataset, loader
    vae = loader.load_vae()
    rgb = torch.from_numpy(dataset.make_dataset(images, seed=seed)[0]).float() / 255.0
    with torch.no_grad():
        z = vae.encode(rgb).float()  # [N, 4, 8, 8], the VAE's own (unscaled) latent
    cells = F.avg_pool2d(rgb.movedim(-1, 1), 64 // z.shape[-1]) * 2 - 1  # [N, 3, 8, 8] in [-1, 1]
    x = torch.cat([z, torch.ones_like(z[:, :1])], 1).movedim(1, -1).reshape(-1, z.shape[1] + 1)
    y = cells.movedim(1, -1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()  # [5, 3]
    error = (x @ solution - y).abs().mean().item()
    return solution[:-1].tolist(), solution[-1].tolist(), error


if __name__ == "__main__":
    factors, bias, error = fit()
    print("PREVIEW_RGB_FACTORS =", [[round(v, 4) for v in row] for row in factors])
    print("PREVIEW_RGB_BIAS =", [round(v, 4) for v in bias])
    print(f"mean absolute error per cell: {error:.3f} (of the range [-1, 1])")
