"""Invert node: a source LATENT -> inverted noise and an inversion object for the edit sampler."""
import comfy.samplers
import torch

from ..attention.capture import AttentionCapture
from ..attention.hooks import with_controller
from ..attention.kv_store import KVStore

from ..latent_ops.inversion import invert
from ..latent_ops.solvers import SOLVERS
from .inputs import CATEGORY, INVERSION, parse_steps

ATTENTION_KEY = "attention_maps"
EXACT_ITERATIONS = 2  # measured: docs/results.md, "Inversion"


class Invert:
    DESCRIPTION = ("Inversion: inverts a source latent along the model's ODE (DDIM for SD-style eps/v models; Euler, "
                   "RF-Solver or FireFlow for flow models such as FLUX), exactly by default (fixed-point passes per "
                   "step), keeping the source trajectory for exact replay.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (INVERSION, "LATENT")
    RETURN_NAMES = ("inversion", "noise")
    OUTPUT_TOOLTIPS = ("Inversion for the Edit Sampler (trajectory, schedule, captures).", "The inverted noise.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to invert with; edit with the same model (its patches, "
                                               "e.g. capture or uniform attention, act during inversion)."}),
                "latent": ("LATENT", {"tooltip": "The source image, VAE-encoded."}),
                "positive": ("CONDITIONING", {"tooltip": "Source prompt (ProEdit) or an empty prompt (UAM, CPAM)."}),
                "steps": ("INT", {"default": 15, "min": 1, "max": 1000, "tooltip": "Inversion steps; the edit "
                                  "sampler uses the same schedule."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple", "tooltip": "Sigma schedule."}),
                "solver": (("auto",) + SOLVERS, {"default": "auto", "tooltip": "auto: ddim for eps/v models, euler "
                           "for flow models. rf_solver (2 evaluations/step) and fireflow (about 1) are 2nd order."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance during "
                                  "inversion; 1 (no CFG) is the usual choice."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Needed only when cfg is not 1."}),
                "exact_iterations": ("INT", {"default": EXACT_ITERATIONS, "min": 0, "max": 20, "tooltip": "Exact "
                                     "inversion: fixed-point passes per step, each one step's evaluations, so the "
                                     "sampler's step lands back on the source (AIDI / ReNoise). 0: the explicit "
                                     "DDIM/Euler inversion step (several dB worse reconstruction). 2 (default) "
                                     "reconstructs the embedded U-Net within 0.2 dB of the VAE round trip."}),
                "capture_steps": ("STRING", {"default": "", "tooltip": "Sampling steps (e.g. '0-4') at which the "
                                  "MODEL's capture patches record attention or K/V from the source trajectory."}),
                "cache_kv": ("BOOLEAN", {"default": False, "tooltip": "Also cache the source image-token K/V of "
                             "every self/joint attention layer at the capture steps (KV-mix 'inversion cache' mode)."}),
                "cache_layers": ("STRING", {"default": "", "tooltip": "Comma-separated layer names to cache (e.g. "
                                 "'double.18, single.0' on Flux, 'output.4.0' on a U-Net); empty: every layer."}),
                "capture_attention": ("BOOLEAN", {"default": False, "tooltip": "Record head-averaged image->text "
                                      "attention maps at the capture steps (for attention-derived masks)."}),
                "cache_dtype": (["float16", "bfloat16", "float32"], {"default": "float16",
                                "tooltip": "Precision of the K/V cache."}),
                "cache_device": (["cpu", "model"], {"default": "cpu", "tooltip": "Keep the K/V cache in CPU memory "
                                 "or on the model's device (faster, uses VRAM)."}),
            },
        }

    def run(self, model, latent, positive, steps, scheduler, solver, cfg, negative=None, capture_steps="",
            cache_kv=False, cache_layers="", capture_attention=False, cache_dtype="float16", cache_device="cpu",
            exact_iterations=EXACT_ITERATIONS):
        if cfg != 1.0 and negative is None:
            raise ValueError("negative: cfg is not 1, so connect a negative CONDITIONING (or set cfg to 1)")
        capture = sorted(parse_steps(capture_steps, steps, "capture_steps"))
        if (cache_kv or capture_attention) and not capture:
            raise ValueError("capture_steps: name the steps to cache or capture (e.g. '0-4')")
        layers = {n.strip() for n in cache_layers.split(",") if n.strip()} or None
        if cache_kv:
            model = with_controller(model, KVStore(capture, layers, dtype=getattr(torch, cache_dtype),
                                                   device=cache_device))
        if capture_attention:
            model = with_controller(model, AttentionCapture(ATTENTION_KEY, steps=capture, phases=("capture",)))
        inversion = invert(model, latent["samples"], positive, negative, cfg, steps, scheduler, solver, capture,
                           exact_iterations=exact_iterations)
        noise = {"samples": model.model.process_latent_out(inversion.trajectory[0].clone())}
        return (inversion, noise)


NODE_CLASS_MAPPINGS = {"AttentionEditInvert": Invert}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditInvert": "Invert (DDIM / Euler / RF-Solver / FireFlow inversion)"}
