"""Train every embedded model in order, then print the quality gates. Seeded; about 11 hours on one CPU core
(stages of the same round can run in parallel on two cores, as they were).

    python -m embedded.train_all [--threads N] [--skip STAGE ...]

Round 1 (data version 1: objects of radius 0.13-0.26; shapes came out as blobs):
 1. ae1:     autoencoder, encoder + decoder (1600 steps on 32x32 crops + 250 on 64x64)
 2. unet1:   U-Net pre-training on the ae1 latents (1500 steps)
 3. ae2:     joint autoencoder fine-tuning with latent-noise augmentation (robust, smoother latent space)
 4. unet2:   U-Net fine-tuning on the ae2 latents (900 steps)
 5. flux1:   Flux (2x2 patches) from scratch on the ae2 latents (1000 steps)
 6. decoder: decoder-only fine-tuning (latent space unchanged)
 7. clip:    domain CLIP                                                   -> weights/shapes_clip.safetensors
Round 2 (data version 2: single objects of radius 0.2-0.33, 3-5 latent cells; same latent space):
 8. unet3:   U-Net fine-tuning, 1500 steps
 9. unet4:   U-Net fine-tuning, 800 more steps at half the rate           -> weights/shapes_unet.safetensors
10. flux2:   Flux (2x2 patches) fine-tuning, 1500 steps
11. flux3:   Flux re-patched to 1x1 patches (8x8 image tokens) and trained on, 1000 steps
12. decoder2: decoder-only fine-tuning on version-2 scenes                -> weights/shapes_taesd.safetensors
Round 3:
13. flux4:   Flux fine-tuning, 1800 more steps
Round 4:
14. flux5:   Flux fine-tuning, 1500 more steps, half of them at uniform noise levels
Round 5:
15. flux6:   the same again from flux5 (1500 steps, seed 6)
16. flux7:   1000 more steps at lr 1.5e-4                                 -> weights/shapes_flux.safetensors
17. quality gates (exit status 1 if one fails)
Intermediate weights go to /tmp/embedded_stages/. The region predictor has its own script
(embedded/train_region_predictor.py, see embedded/README.md).
"""
import argparse
import os
import subprocess
import sys
import time

from . import comfy_env, paths

T = "/tmp/embedded_stages"
V1 = ["--data-version", "1"]
STAGES = [
    ("ae1", ["embedded.train_autoencoder", *V1, "--out", f"{T}/ae1.safetensors"]),
    ("unet1", ["embedded.train_denoiser", "--model", "unet", *V1, "--vae", f"{T}/ae1.safetensors",
               "--out", f"{T}/unet1.safetensors"]),
    ("ae2", ["embedded.train_autoencoder", *V1, "--init", f"{T}/ae1.safetensors", "--crop-steps", "0",
             "--full-steps", "450", "--lr", "3e-4", "--warmup", "20", "--latent-noise", "0.4", "--seed", "2",
             "--out", f"{T}/ae2.safetensors"]),
    ("unet2", ["embedded.train_denoiser", "--model", "unet", *V1, "--vae", f"{T}/ae2.safetensors", "--init",
               f"{T}/unet1.safetensors", "--steps", "900", "--lr", "3e-4", "--out", f"{T}/unet2.safetensors"]),
    ("flux1", ["embedded.train_denoiser", "--model", "flux", *V1, "--patch-size", "2", "--vae",
               f"{T}/ae2.safetensors", "--steps", "1000", "--out", f"{T}/flux1.safetensors"]),
    ("decoder", ["embedded.train_autoencoder", *V1, "--init", f"{T}/ae2.safetensors", "--freeze-encoder",
                 "--crop-steps", "0", "--full-steps", "400", "--lr", "2e-4", "--warmup", "20", "--seed", "3",
                 "--out", f"{T}/decoder1.safetensors"]),
    ("clip", ["embedded.train_domain_clip", *V1, "--steps", "300"]),
    ("unet3", ["embedded.train_denoiser", "--model", "unet", "--vae", f"{T}/decoder1.safetensors", "--init",
               f"{T}/unet2.safetensors", "--steps", "1500", "--lr", "3e-4", "--out", f"{T}/unet3.safetensors"]),
    ("unet4", ["embedded.train_denoiser", "--model", "unet", "--vae", f"{T}/decoder1.safetensors", "--init",
               f"{T}/unet3.safetensors", "--steps", "800", "--lr", "1.5e-4", "--seed", "1", "--out", paths.UNET]),
    ("flux2", ["embedded.train_denoiser", "--model", "flux", "--patch-size", "2", "--vae",
               f"{T}/decoder1.safetensors", "--init", f"{T}/flux1.safetensors", "--steps", "1500", "--lr", "3e-4",
               "--out", f"{T}/flux2.safetensors"]),
    ("flux3", ["embedded.train_denoiser", "--model", "flux", "--vae", f"{T}/decoder1.safetensors", "--init",
               f"{T}/flux2.safetensors", "--steps", "1000", "--lr", "3e-4", "--seed", "2", "--out",
               f"{T}/flux3.safetensors"]),
    ("decoder2", ["embedded.train_autoencoder", "--init", f"{T}/decoder1.safetensors", "--freeze-encoder",
                  "--crop-steps", "1200", "--full-steps", "300", "--lr", "3e-4", "--warmup", "20", "--seed", "4",
                  "--out", paths.AUTOENCODER]),
    ("flux4", ["embedded.train_denoiser", "--model", "flux", "--init", f"{T}/flux3.safetensors", "--steps", "1800",
               "--lr", "2e-4", "--seed", "3", "--out", f"{T}/flux4.safetensors"]),
    ("flux5", ["embedded.train_denoiser", "--model", "flux", "--init", f"{T}/flux4.safetensors", "--steps", "1500",
               "--lr", "2e-4", "--seed", "5", "--uniform-frac", "0.5", "--out", f"{T}/flux5.safetensors"]),
    ("flux6", ["embedded.train_denoiser", "--model", "flux", "--init", f"{T}/flux5.safetensors", "--steps", "1500",
               "--lr", "2e-4", "--seed", "6", "--uniform-frac", "0.5", "--out", f"{T}/flux6.safetensors"]),
    ("flux7", ["embedded.train_denoiser", "--model", "flux", "--init", f"{T}/flux6.safetensors", "--steps", "1000",
               "--lr", "1.5e-4", "--seed", "7", "--uniform-frac", "0.5", "--out", paths.FLUX]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[], choices=[s for s, _ in STAGES])
    comfy_env.add_threads_argument(ap)  # passed on to every stage (they run one after another)
    args = ap.parse_args()
    threads = ["--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(paths.WEIGHTS_DIR, exist_ok=True)
    os.makedirs(T, exist_ok=True)
    for name, cmd in STAGES:
        if name in args.skip:
            continue
        t0 = time.time()
        print(f"== {name}: python -m {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, "-m", *cmd, *threads], cwd=root, env=env, check=True)
        print(f"== {name} done in {(time.time() - t0) / 60:.1f} min", flush=True)
    r = subprocess.run([sys.executable, "-m", "embedded.quality_gates", *threads], cwd=root, env=env)
    raise SystemExit(r.returncode)


if __name__ == "__main__":
    main()
