"""Test-only ComfyUI nodes: tiny random-weight models built from ComfyUI's own classes, and matching conditioning.

Loaded by the tests with ComfyUI's own load_custom_node, like any custom node pack.
"""
import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "edit_pack_test_architectures", Path(__file__).resolve().parents[2] / "embedded" / "architectures.py")
architectures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = architectures
_spec.loader.exec_module(architectures)

CONTEXT_DIM = 32
TOKENS = 8
REFUSED_KINDS = tuple(architectures.refused_family_configs())  # families the pack refuses (built, never sampled)
FAMILY_CONFIGS = {  # joint-attention families: ComfyUI's own model classes at a tiny size
    "sd3": lambda: architectures.sd3_config(context_dim=CONTEXT_DIM, pooled_dim=CONTEXT_DIM),
    "qwen_image": lambda: architectures.qwen_image_config(context_dim=CONTEXT_DIM),
    "lumina2": lambda: architectures.lumina2_config(context_dim=CONTEXT_DIM),
    "z_image": lambda: architectures.lumina2_config(context_dim=CONTEXT_DIM, z_image=True),
}
KINDS = ("sd15", "sd15_v", "sdxl", "flux", "flux2", "flux_kontext", "chroma", *FAMILY_CONFIGS) + REFUSED_KINDS
FLUX_KINDS = ("flux", "flux2", "flux_kontext", "chroma")  # Flux-family MMDiT (rectified flow)
# FLUX.1 Kontext is a FLUX.1 model whose conditionings carry a reference latent (ComfyUI's ReferenceLatent node):
# its tokens follow the image tokens in the joint sequence. 8x8 latent cells: 16 reference tokens at 2x2 patches.
REFERENCE_HW = (8, 8)


def tiny_config(kind):
    """The ComfyUI model config of a tiny model of the given kind (weights in float32)."""
    if kind in ("sd15", "sd15_v"):
        return architectures.unet_config(context_dim=CONTEXT_DIM)
    if kind == "sdxl":
        return architectures.unet_config(context_dim=CONTEXT_DIM, adm_in_channels=CONTEXT_DIM + 6 * 256,
                                         channel_mult=(1, 2), depth=2, linear=True)
    if kind in ("flux", "flux_kontext"):
        return architectures.flux_config(context_dim=CONTEXT_DIM, pooled_dim=CONTEXT_DIM)
    if kind in FAMILY_CONFIGS:
        return FAMILY_CONFIGS[kind]()
    if kind == "flux2":
        return architectures.flux2_config(context_dim=CONTEXT_DIM)
    if kind == "chroma":
        return architectures.chroma_config(context_dim=CONTEXT_DIM)
    raise ValueError(f"kind must be one of {KINDS}")


def tiny_model(kind, seed=0, dtype=torch.float32):
    """A fresh tiny ModelPatcher of the given kind with explicitly initialised random weights in `dtype`."""
    if kind in REFUSED_KINDS:
        return architectures.build_refused(kind, CONTEXT_DIM, seed)
    config = dict(tiny_config(kind), dtype=dtype)
    if kind in FLUX_KINDS:
        return architectures.build_flux(config, seed=seed)
    if kind in FAMILY_CONFIGS:
        return architectures.build_family(kind, config, seed=seed)
    return architectures.build_unet(config, prediction="v" if kind == "sd15_v" else "eps", seed=seed)


def word_vector(word):
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return torch.randn(CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def reference_latent():
    """The fixed reference latent [1, 4, 8, 8] of the flux_kontext kind (as ReferenceLatent would set it)."""
    return torch.randn(1, 4, *REFERENCE_HW, generator=torch.Generator().manual_seed(7))


def tiny_conditioning(text, kind="", length=TOKENS):
    """Token states [1, length, CONTEXT_DIM]: one deterministic vector per word, zero padding; pooled = mean.
    kind "flux_kontext": the conditioning also carries the reference latent (ComfyUI's 'reference_latents').
    length None: one token per word (an encoder that does not pad, as Flux.2's or Qwen-Image's)."""
    length = max(len(text.split()), 1) if length is None else length
    words = text.lower().split()[:length]
    states = torch.zeros(1, length, CONTEXT_DIM)
    for i, word in enumerate(words):
        states[0, i] = word_vector(word)
    pooled = states[0, :max(len(words), 1)].mean(0, keepdim=True)
    options = {"pooled_output": pooled}
    if kind == "flux_kontext":
        options["reference_latents"] = [reference_latent()]
    return [[states, options]]


class TinyTestModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(KINDS),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, kind, seed):
        return (tiny_model(kind, seed),)


class TinyTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})},
                "optional": {"kind": (["", *KINDS], {"default": ""}),
                             "length": ("INT", {"default": TOKENS, "min": 0, "max": 4096,
                                                "tooltip": "token count; 0: one token per word"})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, kind="", length=TOKENS):
        return (tiny_conditioning(text, kind, length or None),)


class WordClip:
    """A CLIP stand-in for word -> token positions only: one token per word, no start token, so positions match
    tiny_conditioning (whose conditionings it never encodes)."""

    def tokenize(self, text, return_word_ids=False):
        self.text = text
        return {"l": [[(hash(w) % 50000, 1.0, i + 1) for i, w in enumerate(text.lower().split())]]}

    def encode_from_tokens_scheduled(self, tokens):
        """The last tokenized text as tiny_conditioning (nodes that encode a prompt they also locate words in)."""
        return tiny_conditioning(self.text)


class TinyTestWordClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        return (WordClip(),)


class TinyTestLatent:
    """A seeded random LATENT [batch, 4, size, size] (a source latent that is not all zeros)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 16, "min": 1}), "seed": ("INT", {"default": 0, "min": 0}),
                             "batch_size": ("INT", {"default": 1, "min": 1})}}
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, size, seed, batch_size):
        gen = torch.Generator().manual_seed(seed)
        return ({"samples": torch.randn(batch_size, 4, size, size, generator=gen) * 0.5},)


class TestSink:
    """Output node that accepts anything, so tests can execute graphs that end in non-output nodes."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ()
    FUNCTION = "sink"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def sink(self, value):
        return ()


NODE_CLASS_MAPPINGS = {"TinyTestModel": TinyTestModel, "TinyTestConditioning": TinyTestConditioning,
                       "TinyTestWordClip": TinyTestWordClip, "TinyTestLatent": TinyTestLatent, "TestSink": TestSink}
