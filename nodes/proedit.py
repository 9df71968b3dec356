"""ProEdit nodes: KV-mix attention patch, Latents-Shift on the inversion, and the edit mask from attention."""
import dataclasses

import comfy.sample

from ..attention.dit_families import family_key
from ..attention.hooks import model_family, with_controller
from ..attention.kv_mix import EDIT_TYPES, KVMix as KVMixController
from ..latent_ops.masks import as_mask, pixels_per_latent, resize
from ..latent_ops.attention_mask import (DIT_LAYERS, mask_from_map, overlay, word_attention_map,
                                         word_token_positions)
from ..latent_ops.latents_shift import latents_shift
from .inputs import CATEGORY, INVERSION, ModelPatchNode

KV_SOURCES = {"batch": "batch", "inversion cache": "cache"}


class KVMix(ModelPatchNode):
    DESCRIPTION = ("ProEdit KV-mix. During the first inject steps of the Edit Sampler, the target branch's image "
                   "keys and values become delta*target + (1-delta)*source inside the edit mask and the source's "
                   "outside it (text K/V and all queries stay the target's). Flux-family MMDiT: every double and "
                   "single block (joint attention, image tokens only). U-Net (SD1.x/SD2.x/SDXL): every "
                   "self-attention layer (cross-attention keeps the target prompt). Edit types: change/remove mix "
                   "inside the mask; style mixes everywhere (mask not needed); add mixes everywhere except the mask, "
                   "which keeps source K/V.")
    OUTPUT_TOOLTIPS = ("The MODEL with KV-mix; connect it to the Edit Sampler (and nowhere the source is inverted "
                       "if you use 'batch').",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to edit with (U-Net or Flux-family MMDiT)."}),
                "delta": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Share of "
                                    "the target's K/V inside the edited region (1: target only, 0: source only)."}),
                "inject_steps": ("INT", {"default": 5, "min": 0, "max": 1000, "tooltip": "KV-mix acts on the "
                                         "first this many sampling steps (ProEdit: 5 of 15); later steps are plain."}),
                "edit_type": (list(EDIT_TYPES), {"default": "change", "tooltip": "change/remove: mix inside the "
                              "mask, source K/V outside; style: mix everywhere; add: mix outside the mask, source "
                              "K/V inside."}),
                "kv_source": (list(KV_SOURCES), {"default": "batch", "tooltip": "batch: the source branch of the "
                              "Edit Sampler's batch; inversion cache: K/V stored by an Invert of this MODEL with "
                              "cache_kv on (it caches exactly the inject steps; FLUX.1-dev at 1024 px: about 2.9 "
                              "GiB per step). Identical for Euler/DDIM; for 2nd-order solvers the cache gives the "
                              "step-start K/V to both evaluations of a step."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Edit mask (pixel or latent size; 1 = edit). From 'Edit Mask From "
                                  "Attention' or drawn. Required unless edit_type is style."}),
            },
        }

    def patch(self, model, delta, inject_steps, edit_type, kv_source, mask=None):
        model_family(model)
        if mask is not None:
            mask = as_mask(mask)
        return (with_controller(model, KVMixController(mask, delta, inject_steps, edit_type, KV_SOURCES[kv_source])),)


class LatentsShift:
    DESCRIPTION = ("ProEdit Latents-Shift: moves the masked region of the inverted noise towards seeded Gaussian "
                   "noise by a masked per-channel AdaIN, z_hat = M*(beta*AdaIN(z, R) + (1-beta)*z) + (1-M)*z. Only "
                   "the target branch starts from the shifted noise (the source is untouched); used when the Edit "
                   "Sampler starts at step 0. ProEdit skips it for style edits: leave this node out then.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (INVERSION,)
    RETURN_NAMES = ("inversion",)
    OUTPUT_TOOLTIPS = ("The inversion with a shifted target start latent.",)
    FUNCTION = "shift"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "inversion": (INVERSION, {"tooltip": "From the Invert node."}),
                "mask": ("MASK", {"tooltip": "Edit mask (pixel or latent size); positions outside stay unchanged."}),
                "beta": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fusion "
                                   "ratio: 0 keeps the inverted noise, 1 replaces the masked statistics fully."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip": "Seed of the "
                                 "reference noise R."}),
            },
        }

    def shift(self, inversion, mask, beta, seed):
        mask = as_mask(mask)
        base = inversion.target_start if inversion.target_start is not None else inversion.trajectory[0]
        return (dataclasses.replace(inversion, target_start=latents_shift(base, mask, beta, seed)),)


class EditMaskFromAttention:
    DESCRIPTION = ("Edit mask from attention (ProEdit): one evaluation of the clean source latent with the source "
                   "prompt; the head-averaged attention of the image to the edit word (Flux-family MMDiT: joint "
                   "attention of the double blocks; U-Net: cross-attention maps of all layers), thresholded at "
                   "its mean and dilated by a few tokens. Multi-token words are handled (all their tokens count).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "overlay")
    OUTPUT_TOOLTIPS = ("The edit mask at the image size (without an image: the latent size x 8, x 16 on FLUX.2).",
                       "The mask over the image (red), or the mask in grey without an image.")
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model you invert and edit with."}),
                "latent": ("LATENT", {"tooltip": "The source image, VAE-encoded."}),
                "positive": ("CONDITIONING", {"tooltip": "The source prompt's CONDITIONING (same text as below)."}),
                "clip": ("CLIP", {"tooltip": "The CLIP that encoded the source prompt (its tokenizer locates the "
                                  "word)."}),
                "source_prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "The source prompt text, "
                                             "exactly as encoded."}),
                "word": ("STRING", {"default": "", "tooltip": "The edited object's word(s) in the source prompt, "
                                    "e.g. 'cat'."}),
                "dilation": ("INT", {"default": 1, "min": 0, "max": 16, "tooltip": "Grow the mask by this many "
                                     "tokens (ProEdit: 1, a 3x3 dilation on the token grid)."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The source image: sets the mask size and is used for the overlay."}),
                "dit_layers": (list(DIT_LAYERS), {"default": DIT_LAYERS[0], "tooltip": "Flux-family MMDiT: average "
                               "the maps of all double blocks (default: mask IoU 0.47 vs 0.15 with the last block on "
                               "the embedded Flux) or read the last double block only (ProEdit's choice)."}),
            },
        }

    def extract(self, model, latent, positive, clip, source_prompt, word, dilation, image=None,
                dit_layers=DIT_LAYERS[0]):
        family = family_key(model)
        if not source_prompt.strip():
            raise ValueError("source_prompt: empty; enter the source prompt text that the positive input encodes")
        positions = word_token_positions(clip, source_prompt, word, family, cond_length=positive[0][0].shape[1])
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        word_map = word_attention_map(model, samples, positive, positions, dit_layers=dit_layers)
        mask = mask_from_map(word_map, dilation)
        scale = pixels_per_latent(model)
        size = tuple(image.shape[1:3]) if image is not None else (samples.shape[-2] * scale, samples.shape[-1] * scale)
        mask = resize(mask, size).cpu()
        return (mask, overlay(mask, image.cpu() if image is not None else None))


NODE_CLASS_MAPPINGS = {
    "AttentionEditKVMix": KVMix,
    "AttentionEditLatentsShift": LatentsShift,
    "AttentionEditMaskFromAttention": EditMaskFromAttention,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionEditKVMix": "KV-Mix (ProEdit)",
    "AttentionEditLatentsShift": "Latents Shift (ProEdit)",
    "AttentionEditMaskFromAttention": "Edit Mask From Attention (ProEdit)",
}
