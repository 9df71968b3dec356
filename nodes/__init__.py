"""Thin ComfyUI node classes, one file per technique; this module gathers their mappings."""
from . import edit_sampler, invert

_MODULES = (invert, edit_sampler)
NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
