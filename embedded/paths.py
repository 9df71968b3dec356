"""Where the embedded default's shipped weights live (inside the pack; nothing is downloaded).

$EMBEDDED_WEIGHTS_DIR overrides the folder (used by smoke tests of the training scripts)."""
import os

WEIGHTS_DIR = os.environ.get("EMBEDDED_WEIGHTS_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
AUTOENCODER = os.path.join(WEIGHTS_DIR, "shapes_taesd.safetensors")
UNET = os.path.join(WEIGHTS_DIR, "shapes_unet.safetensors")
FLUX = os.path.join(WEIGHTS_DIR, "shapes_flux.safetensors")
DOMAIN_CLIP = os.path.join(WEIGHTS_DIR, "shapes_clip.safetensors")
