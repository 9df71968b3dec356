"""Sampling helpers for tests: ComfyUI's own KSampler path (comfy.sample.sample) on a MODEL."""
import torch


def latent(kind, batch=1, size=16, seed=0):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed)) * 0.5


def ksample(model, positive, negative, latent_image, steps=4, cfg=2.0, sampler="euler", scheduler="normal", seed=0,
            denoise=1.0):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent_image, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent_image,
                               denoise=denoise, disable_pbar=True, seed=seed)
