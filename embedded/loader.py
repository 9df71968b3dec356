"""Build the embedded default's (MODEL, CLIP, VAE) from the shipped weights, with stock ComfyUI classes.

MODEL: ModelPatcher around comfy.model_base.BaseModel (U-Net, eps, SD discrete schedule) or
comfy.model_base.Flux (rectified flow), built by embedded.architectures from the config stored in the
weights file's metadata. CLIP: frozen MiniLM in comfy.sd.CLIP. VAE: comfy.sd.VAE on a TAESD-format state dict.
"""
import json
import os

import torch
from safetensors import safe_open

import comfy.sd
import comfy.utils

from . import paths, text_encoder

DENOISERS = ("unet", "flux")


def read_metadata(path):
    """The JSON spec stored under the 'spec' metadata key of a denoiser weights file."""
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["spec"])


def missing_weights_error(path):
    return FileNotFoundError(f"embedded weights not found: {path}. Train them with `python -m embedded.train_all` "
                             "(see embedded/README.md).")


def load_vae(path=paths.AUTOENCODER):
    """The domain autoencoder as a stock comfy.sd.VAE (TAESD format)."""
    if not os.path.exists(path):
        raise missing_weights_error(path)
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(path, safe_load=True))


def build_denoiser(spec, state_dict=None, seed=0):
    """A ModelPatcher for a denoiser spec (see embedded.denoiser_specs); random init when state_dict is None."""
    from . import architectures  # imported lazily: it imports comfy.model_base
    cfg = dict(spec["config"])
    if spec["kind"] == "unet":
        cfg["channel_mult"] = tuple(cfg["channel_mult"])
        return architectures.build_unet(architectures.unet_config(**cfg), state_dict=state_dict,
                                        prediction=spec.get("prediction", "eps"), seed=seed)
    if spec["kind"] == "flux":
        return architectures.build_flux(architectures.flux_config(**cfg), state_dict=state_dict,
                                        shift=spec.get("shift", 1.0), seed=seed)
    raise ValueError(f"unknown denoiser kind {spec['kind']!r}")


def load_model(denoiser="unet", path=None):
    """The trained denoiser ('unet' or 'flux') as a ModelPatcher; path overrides the shipped weights file."""
    if denoiser not in DENOISERS:
        raise ValueError(f"denoiser must be one of {DENOISERS}, got {denoiser!r}")
    path = path or (paths.UNET if denoiser == "unet" else paths.FLUX)
    if not os.path.exists(path):
        raise missing_weights_error(path)
    sd = {k: v.float() for k, v in comfy.utils.load_torch_file(path, safe_load=True).items()}
    return build_denoiser(read_metadata(path), state_dict=sd)


def load_embedded(denoiser="unet", text_dtype=torch.float32):
    """(model, clip, vae) for the chosen denoiser, ready for stock CLIPTextEncode / KSampler / VAEDecode."""
    return load_model(denoiser), text_encoder.build_clip(dtype=text_dtype), load_vae()
