"""Invert node: a source LATENT -> inverted noise and an inversion object for the edit sampler."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..attention.capture import AttentionCapture
from ..attention.controller import chain_of
from ..attention.hooks import self_attention_layers, with_controller
from ..attention.kv_mix import cache_needs, cache_readers
from ..attention.kv_store import DTYPES, KVStore, estimate_bytes, resolve_dtype
from ..attention.layer_shapes import self_attention_shapes
from ..latent_ops.inversion import invert
from ..latent_ops.solvers import SOLVERS
from .feedback import show
from .inputs import CATEGORY, INVERSION, parse_steps

ATTENTION_KEY = "attention_maps"
EXACT_ITERATIONS = 2  # measured: docs/results.md, "Inversion"
GIB = 2 ** 30


def step_list(steps):
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs, out = [], []
    for s in sorted(steps):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    for lo, hi in runs:
        out.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return ", ".join(out)


def parse_layers(text, names):
    """cache_layers text -> a set of layer names (None when empty); a clear error for names the model lacks."""
    chosen = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ValueError(f"cache_layers: this MODEL has no attention layer {unknown}; its layers are "
                         f"{', '.join(names[:3])} ... {names[-1]}")
    return chosen or None


def kv_cache_plan(model, capture, capture_text, cache_layers, total_steps):
    """(steps, layers or None for all) to cache: the capture steps and cache_layers, narrowed to what a KV-mix in
    'inversion cache' mode on the MODEL reads (its first inject steps; empty inputs pick exactly those), and a
    clear error naming the input that leaves out a step or layer it reads."""
    layers = parse_layers(cache_layers, self_attention_layers(model))
    readers = cache_readers(chain_of(model))
    if not readers:
        if not capture:
            raise ValueError("capture_steps: name the steps to cache (e.g. '0-4')")
        return set(capture), layers
    need_steps, need_layers = cache_needs(readers, total_steps)
    missing = need_steps - set(capture)
    if capture and missing:
        raise ValueError(f"capture_steps: the KV-Mix on this MODEL reads the K/V cache at steps "
                         f"{step_list(need_steps)} (its inject_steps); '{capture_text}' leaves out "
                         f"{step_list(missing)}. Leave capture_steps empty to cache exactly those steps")
    if layers is not None and (need_layers is None or not need_layers <= layers):
        reads = "every layer" if need_layers is None else f"layers {sorted(need_layers)}"
        raise ValueError(f"cache_layers: the KV-Mix on this MODEL reads {reads} from the K/V cache; "
                         f"'{cache_layers}' leaves some out. Leave cache_layers empty to cache exactly what it reads")
    return need_steps, need_layers


def check_fits(nbytes, model, cache_device):
    """Refuse a cache larger than the free memory where it is kept (ComfyUI's intermediate device) or, for
    cache_device 'model', larger than the model's device can hold next to the weights."""
    advice = ("cache fewer steps (capture_steps, or fewer KV-Mix inject_steps), fewer layers (cache_layers), or "
              "use kv_source 'batch' in the KV-Mix and cache_kv off (no cache)")
    keep = comfy.model_management.intermediate_device()
    free = comfy.model_management.get_free_memory(keep)
    if nbytes > free:
        raise ValueError(f"cache_kv: the K/V cache needs {nbytes / GIB:.2f} GiB, {keep} memory has "
                         f"{free / GIB:.2f} GiB free; {advice}")
    device = model.load_device
    if cache_device == "model" and device != keep:
        room = comfy.model_management.get_total_memory(device) - model.model_size()
        if nbytes > room:
            raise ValueError(f"cache_device: the K/V cache ({nbytes / GIB:.2f} GiB) does not fit on {device} "
                             f"next to the model ({room / GIB:.2f} GiB left); use cache_device 'cpu' "
                             f"(streamed one step at a time) or {advice}")


def describe(nbytes, steps, layers, batch, dtype, cache_device):
    per_step = nbytes / max(len(steps), 1) / GIB
    where = "streamed to the model's device one step at a time" if cache_device == "cpu" else \
        "copied whole to the model's device for the edit"
    return (f"K/V cache: {nbytes / GIB:.2f} GiB = {len(steps)} steps ({step_list(steps)}) x {per_step:.3f} GiB "
            f"({layers} layers x K,V x batch {batch}, {str(dtype).replace('torch.', '')}); kept in "
            f"{comfy.model_management.intermediate_device()} memory, {where}")


class Invert:
    DESCRIPTION = ("Inversion: inverts a source latent along the model's ODE (DDIM for SD-style eps/v models; Euler, "
                   "RF-Solver or FireFlow for flow models such as FLUX), exactly by default (fixed-point passes per "
                   "step), keeping the source trajectory for exact replay.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (INVERSION, "LATENT", "NOISE", "SIGMAS")
    RETURN_NAMES = ("inversion", "noise", "noise_source", "sigmas")
    OUTPUT_TOOLTIPS = (
        "Inversion for the Edit Sampler / Edit Guider (trajectory, schedule, captures).",
        "The inverted noise as a LATENT. Stock sampling from it (a plain reconstruction or regeneration): on eps/v "
        "models KSamplerAdvanced with add_noise disable and this node's steps and scheduler. On flow models (FLUX) "
        "ComfyUI's KSampler cannot start from a given latent: its noise scaling at sigma 1 multiplies the latent by "
        "1 - sigma = 0; use SamplerCustomAdvanced with noise_source and sigmas below (any model family).",
        "NOISE for SamplerCustomAdvanced (with the noise LATENT as its latent_image): the sampler then starts exactly "
        "at the inverted noise on eps/v and flow models.",
        "The inversion's sigma schedule, for SamplerCustomAdvanced.")
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
                                  "MODEL's capture patches record attention or K/V from the source trajectory. With "
                                  "cache_kv and a KV-Mix in 'inversion cache' mode on the MODEL, empty caches exactly "
                                  "the KV-Mix's inject steps (and only those are cached)."}),
                "cache_kv": ("BOOLEAN", {"default": False, "tooltip": "Also cache the source image-token K/V of "
                             "the self/joint attention layers at the capture steps (KV-Mix 'inversion cache' mode). "
                             "Its size is estimated and shown before inverting, and refused when it cannot fit "
                             "(FLUX.1-dev at 1024 px: about 2.9 GiB per step in bf16)."}),
                "cache_layers": ("STRING", {"default": "", "tooltip": "Comma-separated layer names to cache (e.g. "
                                 "'double.18, single.0' on Flux, 'output.4.0' on a U-Net); empty: every layer the "
                                 "KV-Mix on the MODEL reads (every layer)."}),
                "capture_attention": ("BOOLEAN", {"default": False, "tooltip": "Record head-averaged image->text "
                                      "attention maps at the capture steps (for attention-derived masks)."}),
                "cache_dtype": (["auto"] + list(DTYPES), {"default": "auto", "tooltip": "Precision of the K/V "
                                "cache. auto: the dtype the model computes in (bf16 for FLUX; float16 would "
                                "overflow bf16 activations above 65504)."}),
                "cache_device": (["cpu", "model"], {"default": "cpu", "tooltip": "Where the edit reads the K/V "
                                 "cache. It is always kept in ComfyUI's intermediate memory (CPU RAM unless "
                                 "--gpu-only). cpu: each step's K/V go to the model's device when that step is "
                                 "edited (one step in VRAM at a time); model: the whole cache is copied there when "
                                 "the edit starts (more VRAM). Freed when the edit ends."}),
            },
        }

    def run(self, model, latent, positive, steps, scheduler, solver, cfg, negative=None, capture_steps="",
            cache_kv=False, cache_layers="", capture_attention=False, cache_dtype="auto", cache_device="cpu",
            exact_iterations=EXACT_ITERATIONS):
        if cfg != 1.0 and negative is None:
            raise ValueError("negative: cfg is not 1, so connect a negative CONDITIONING (or set cfg to 1)")
        capture = sorted(parse_steps(capture_steps, steps, "capture_steps"))
        if capture_attention and not capture:
            raise ValueError("capture_steps: name the steps to capture (e.g. '0-4')")
        if cache_readers(chain_of(model)) and not cache_kv:
            raise ValueError("cache_kv: the MODEL carries a KV-Mix with kv_source 'inversion cache', which reads "
                             "the K/V cache this node builds; turn cache_kv on (or use kv_source 'batch')")
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])  # as KSampler: Qwen-Image 5-d
        kv_steps = set()
        if cache_kv:
            kv_steps, layers = kv_cache_plan(model, capture, capture_steps, cache_layers, steps)
            dtype = resolve_dtype(model, cache_dtype)
            shapes = self_attention_shapes(model, samples.shape[-2:])
            nbytes = estimate_bytes(shapes, kv_steps, layers, samples.shape[0], dtype)
            show(describe(nbytes, kv_steps, len(shapes) if layers is None else len(layers), samples.shape[0],
                          dtype, cache_device))
            check_fits(nbytes, model, cache_device)
            model = with_controller(model, KVStore(kv_steps, layers, dtype=dtype,
                                                   device=comfy.model_management.intermediate_device()))
        if capture_attention:
            model = with_controller(model, AttentionCapture(ATTENTION_KEY, steps=capture, phases=("capture",)))
        inversion = invert(model, samples, positive, negative, cfg, steps, scheduler, solver,
                           sorted(kv_steps | set(capture)), exact_iterations=exact_iterations)
        inversion.kv_cache_device = cache_device
        noise = {"samples": model.model.process_latent_out(inversion.trajectory[0].clone())}
        return (inversion, noise, InvertedNoise(inversion, noise["samples"]), inversion.sigmas.clone())


class InvertedNoise:
    """A NOISE whose stock noise scaling, with the inverted noise LATENT as the latent, gives the inverted noise:
    eps/v models x = latent + sigma * 0; flow models x = sigma * noise + (1 - sigma) * latent with noise = latent."""
    seed = 0  # the sampler's own noise (ancestral samplers) is seeded with it

    def __init__(self, inversion, latent):
        self.start, self.flow, self.latent = inversion.trajectory[0], inversion.flow, latent

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        if samples.shape != self.latent.shape or not torch.allclose(samples.to(self.latent), self.latent, atol=1e-4):
            raise ValueError("noise_source: connect the same Invert node's noise LATENT as the sampler's "
                             "latent_image (this NOISE starts the sampler at the inverted noise only from it)")
        return self.start.clone() if self.flow else torch.zeros_like(self.start)


NODE_CLASS_MAPPINGS = {"AttentionEditInvert": Invert}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditInvert": "Invert (DDIM / Euler / RF-Solver / FireFlow inversion)"}
