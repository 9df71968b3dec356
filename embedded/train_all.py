"""Train every embedded model in order, then print the quality gates. Seeded; about 2 hours on one CPU core.

    OMP_NUM_THREADS=1 python -m embedded.train_all [--skip STAGE ...]

1. ae1:     autoencoder, encoder + decoder (1600 steps on 32x32 crops + 250 on 64x64)
2. unet1:   U-Net pre-training on the ae1 latents (1500 steps)
3. ae2:     joint autoencoder fine-tuning with latent-noise augmentation (robust, smoother latent space)
4. unet2:   U-Net fine-tuning on the ae2 latents (900 steps)              -> weights/shapes_unet.safetensors
5. flux:    Flux from scratch on the ae2 latents (1000 steps)             -> weights/shapes_flux.safetensors
6. decoder: decoder-only fine-tuning (latent space unchanged)             -> weights/shapes_taesd.safetensors
7. clip:    domain CLIP                                                   -> weights/shapes_clip.safetensors
8. quality gates (exit status 1 if one fails)
Intermediate weights go to /tmp/embedded_stages/.
"""
import argparse
import os
import subprocess
import sys
import time

from . import paths

T = "/tmp/embedded_stages"
STAGES = [
    ("ae1", ["embedded.train_autoencoder", "--out", f"{T}/ae1.safetensors"]),
    ("unet1", ["embedded.train_denoiser", "--model", "unet", "--vae", f"{T}/ae1.safetensors",
               "--out", f"{T}/unet1.safetensors"]),
    ("ae2", ["embedded.train_autoencoder", "--init", f"{T}/ae1.safetensors", "--crop-steps", "0", "--full-steps", "450",
             "--lr", "3e-4", "--warmup", "20", "--latent-noise", "0.4", "--seed", "2", "--out", f"{T}/ae2.safetensors"]),
    ("unet2", ["embedded.train_denoiser", "--model", "unet", "--vae", f"{T}/ae2.safetensors", "--init",
               f"{T}/unet1.safetensors", "--steps", "900", "--lr", "3e-4", "--out", paths.UNET]),
    ("flux", ["embedded.train_denoiser", "--model", "flux", "--vae", f"{T}/ae2.safetensors", "--steps", "1000",
              "--out", paths.FLUX]),
    ("decoder", ["embedded.train_autoencoder", "--init", f"{T}/ae2.safetensors", "--freeze-encoder", "--crop-steps",
                 "0", "--full-steps", "400", "--lr", "2e-4", "--warmup", "20", "--seed", "3", "--out", paths.AUTOENCODER]),
    ("clip", ["embedded.train_domain_clip", "--steps", "300"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[], choices=[s for s, _ in STAGES])
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(paths.WEIGHTS_DIR, exist_ok=True)
    os.makedirs(T, exist_ok=True)
    for name, cmd in STAGES:
        if name in args.skip:
            continue
        t0 = time.time()
        print(f"== {name}: python -m {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, "-m", *cmd], cwd=root, env=env, check=True)
        print(f"== {name} done in {(time.time() - t0) / 60:.1f} min", flush=True)
    r = subprocess.run([sys.executable, "-m", "embedded.quality_gates"], cwd=root, env=env)
    raise SystemExit(r.returncode)


if __name__ == "__main__":
    main()
