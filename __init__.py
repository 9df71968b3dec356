"""Attention Edit: training-free real-image editing nodes for ComfyUI."""
from . import example_inputs
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

example_inputs.provide()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
