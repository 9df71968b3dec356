"""Training data for the denoisers: rendered scenes encoded once by the shipped VAE, captions by the CLIP.

Everything goes through the stock ComfyUI objects (VAE.encode = VAEEncode, CLIP.encode_from_tokens =
CLIPTextEncode), so the denoisers learn exactly the latents and token states they will see in a graph.
The result is cached (a .pt file keyed by the arguments) so the U-Net and Flux runs share it.
"""
import hashlib
import os
import time

import torch

from . import dataset, text_encoder


def file_tag(path):
    """Short hash of an autoencoder's encoder + latent normalisation (the latents depend on nothing else)."""
    from safetensors.torch import load_file
    sd = load_file(path)
    h = hashlib.sha1()
    for k in sorted(sd):
        if not k.startswith("taesd_decoder."):
            h.update(k.encode())
            h.update(sd[k].numpy().tobytes())
    return h.hexdigest()[:10]


def build(vae, clip, n=6000, seed=1, cache_dir="/tmp/embedded_cache", batch=64, tag="ae", version=dataset.DATA_VERSION):
    """dict: latents [n,4,8,8], cap_idx [n], conds [U,32,384], pooled [U,384], captions (U unique; index 0 = "")."""
    path = os.path.join(cache_dir, f"latents_v{version}_{tag}_n{n}_seed{seed}.pt")
    if os.path.exists(path):
        return torch.load(path)
    t0 = time.time()
    images, captions, _ = dataset.make_dataset(n, seed=seed, held_out=True, version=version)
    uniq = [""] + sorted(set(captions))
    index = {c: i for i, c in enumerate(uniq)}
    with torch.inference_mode():
        conds, pooled = text_encoder.encode(clip, uniq)
        pixels = torch.from_numpy(images).float().div(255.0)  # ComfyUI IMAGE layout [N,H,W,C] in [0,1]
        latents = torch.cat([vae.encode(pixels[i:i + batch]) for i in range(0, n, batch)])
    data = {"latents": latents.float().clone(), "cap_idx": torch.tensor([index[c] for c in captions]),
            "conds": conds.float().clone(), "pooled": pooled.float().clone(), "captions": uniq}
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(data, path)
    print(f"encoded {n} images, {len(uniq)} captions in {time.time() - t0:.0f}s; latent mean "
          f"{latents.mean():.3f} std {latents.std():.3f}", flush=True)
    return data
