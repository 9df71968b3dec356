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
KINDS = ("sd15", "sd15_v", "sdxl", "flux")


def tiny_config(kind):
    """The ComfyUI model config of a tiny model of the given kind (weights in float32)."""
    if kind in ("sd15", "sd15_v"):
        return architectures.unet_config(context_dim=CONTEXT_DIM)
    if kind == "sdxl":
        return architectures.unet_config(context_dim=CONTEXT_DIM, adm_in_channels=CONTEXT_DIM + 6 * 256,
                                         channel_mult=(1, 2), depth=2, linear=True)
    if kind == "flux":
        return architectures.flux_config(context_dim=CONTEXT_DIM, pooled_dim=CONTEXT_DIM)
    raise ValueError(f"kind must be one of {KINDS}")


def tiny_model(kind, seed=0, dtype=torch.float32):
    """A fresh tiny ModelPatcher of the given kind with explicitly initialised random weights in `dtype`."""
    config = dict(tiny_config(kind), dtype=dtype)
    if kind == "flux":
        return architectures.build_flux(config, seed=seed)
    return architectures.build_unet(config, prediction="v" if kind == "sd15_v" else "eps", seed=seed)


def word_vector(word):
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return torch.randn(CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def tiny_conditioning(text, length=TOKENS):
    """Token states [1, length, CONTEXT_DIM]: one deterministic vector per word, zero padding; pooled = mean.
    length None: one token per word (an encoder that does not pad, as Flux.2's or Qwen-Image's)."""
    length = max(len(text.split()), 1) if length is None else length
    words = text.lower().split()[:length]
    states = torch.zeros(1, length, CONTEXT_DIM)
    for i, word in enumerate(words):
        states[0, i] = word_vector(word)
    pooled = states[0, :max(len(words), 1)].mean(0, keepdim=True)
    return [[states, {"pooled_output": pooled}]]


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
                "optional": {"length": ("INT", {"default": TOKENS, "min": 0, "max": 4096,
                                                "tooltip": "token count; 0: one token per word"})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, length=TOKENS):
        return (tiny_conditioning(text, length or None),)


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
                       "TestSink": TestSink}
