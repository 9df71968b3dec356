"""Image-token count and channel width of every self (U-Net) / joint (MMDiT) attention layer, from the model's
structure and a latent size: what a K/V cache of those layers holds, known before anything runs."""
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

from .dit_families import family_of, layer_shapes
from .hooks import model_family


def _unet_shapes(dm, hw):
    """Walks the U-Net in forward order: a Downsample halves the grid (rounding up, as its stride-2 conv does),
    an Upsample returns to the grid of the level above (ComfyUI matches the skip connection's shape)."""
    grids, shapes = [tuple(hw)], {}
    for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
        for number, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    h, w = grids[-1]
                    for i, tb in enumerate(layer.transformer_blocks):
                        shapes[f"{name}.{number}.{i}"] = (h * w, tb.attn1.heads * tb.attn1.dim_head)
                elif isinstance(layer, Downsample):
                    h, w = grids[-1]
                    grids.append(((h + 1) // 2, (w + 1) // 2))
                elif isinstance(layer, Upsample):
                    grids.pop()
    return shapes


def self_attention_shapes(model, latent_hw):
    """{layer name: (image tokens, channels = heads x head_dim)} for a latent of spatial size latent_hw."""
    dm = model.model.diffusion_model
    if model_family(model) == "unet":
        return _unet_shapes(dm, latent_hw)
    if family_of(dm) is not None:  # SD3/SD3.5, Qwen-Image, Lumina 2 / Z-Image
        return layer_shapes(family_of(dm), dm, latent_hw)
    p = dm.patch_size  # the model pads the latent up to whole patches; reference tokens (Kontext) are not cached
    tokens = -(-latent_hw[0] // p) * -(-latent_hw[1] // p)
    names = [f"double.{i}" for i in range(len(dm.double_blocks))] + \
        [f"single.{i}" for i in range(len(dm.single_blocks))]
    return {name: (tokens, dm.hidden_size) for name in names}
