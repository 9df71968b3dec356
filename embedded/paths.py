"""Where the embedded default's shipped weights live (inside the pack; nothing is downloaded)."""
import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
AUTOENCODER = os.path.join(WEIGHTS_DIR, "shapes_taesd.safetensors")
UNET = os.path.join(WEIGHTS_DIR, "shapes_unet.safetensors")
FLUX = os.path.join(WEIGHTS_DIR, "shapes_flux.safetensors")
DOMAIN_CLIP = os.path.join(WEIGHTS_DIR, "shapes_clip.safetensors")
