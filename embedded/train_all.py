"""Train every embedded model in order, then print the quality gates. Seeded; about 2 hours on one CPU core.

    OMP_NUM_THREADS=1 python -m embedded.train_all [--skip autoencoder unet decoder flux clip]

1. autoencoder (encoder + decoder, TAESD format)      -> weights/shapes_taesd.safetensors
2. U-Net denoiser (eps) on that encoder's latents      -> weights/shapes_unet.safetensors
3. decoder-only fine-tuning (latent space unchanged)   -> weights/shapes_taesd.safetensors
4. Flux denoiser (rectified flow)                      -> weights/shapes_flux.safetensors
5. domain CLIP (contrastive image-text)                -> weights/shapes_clip.safetensors
6. quality gates (exit status 1 if one fails)
"""
import argparse
import os
import subprocess
import sys
import time

from . import paths

STAGES = [
    ("autoencoder", ["embedded.train_autoencoder"]),
    ("unet", ["embedded.train_denoiser", "--model", "unet"]),
    ("decoder", ["embedded.train_autoencoder", "--init", paths.AUTOENCODER, "--freeze-encoder", "--crop-steps", "1000",
                 "--full-steps", "200", "--lr", "3e-4", "--warmup", "20", "--seed", "1"]),
    ("flux", ["embedded.train_denoiser", "--model", "flux"]),
    ("clip", ["embedded.train_domain_clip"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[], choices=[s for s, _ in STAGES])
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(paths.WEIGHTS_DIR, exist_ok=True)
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
