"""Hook adapters: route every U-Net and Flux MMDiT attention call of a MODEL clone through its controller chain.

Only ComfyUI's public patch points are used: attn1/attn2 replace patches on U-Net transformer blocks, and
transformer_options["optimized_attention_override"] plus a DIFFUSION_MODEL wrapper (text length and token
grid) on Flux. A patch another node already put on a layer is kept and used for the plain computation.
"""
import comfy.ldm.flux.model
import comfy.patcher_extension
from comfy.ldm.modules import attention as comfy_attention
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from .context import AttnCall
from .controller import CHAIN_KEY, RUN_KEY, chain_of, run_chain

HOOKED_KEY = "edit_pack_hooked"
DIT_INFO_KEY = "edit_pack_dit_geometry"
PREV_OVERRIDE_KEY = "edit_pack_prev_attention_override"
WRAPPER_KEY = "edit_pack"


class UnsupportedModelError(ValueError):
    pass


def model_family(model):
    """'unet' for U-Net models (SD1.x, SD2.x, SDXL), 'dit' for Flux-family MMDiT; otherwise a clear error."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if isinstance(dm, UNetModel):
        return "unet"
    if isinstance(dm, comfy.ldm.flux.model.Flux):
        return "dit"
    name = type(dm).__name__ if dm is not None else type(model).__name__
    raise UnsupportedModelError(
        f"model: the edit pack patches U-Net (SD1.x, SD2.x, SDXL) and Flux-family MMDiT models; this MODEL's "
        f"diffusion model is {name}. Load a supported checkpoint.")


def _roles(options, batch):
    run = options.get(RUN_KEY)
    if run is None:
        return ["target"] * batch, [True] * batch
    return run.row_roles(batch, options.get("cond_or_uncond") or [0])


def _split_heads(t, heads):
    return t.view(t.shape[0], t.shape[1], heads, t.shape[2] // heads).transpose(1, 2)


def _merge_heads(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], t.shape[1] * t.shape[3])


class UNetAttnHook:
    """attn1 (self) / attn2 (cross) replace patch for one U-Net transformer block."""

    def __init__(self, kind, fallback=None):
        self.kind, self.fallback = kind, fallback

    def __deepcopy__(self, memo):
        return self

    def plain(self, q, k, v, options):
        if self.fallback is not None:
            return self.fallback(q, k, v, options)
        return comfy_attention.optimized_attention(q, k, v, options["n_heads"],
                                                   attn_precision=options.get("attn_precision"),
                                                   transformer_options=options)

    def __call__(self, q, k, v, options):
        chain = options.get(CHAIN_KEY)
        if not chain:
            return self.plain(q, k, v, options)
        heads = options["n_heads"]
        block = options.get("block", ("?", 0))
        roles, conds = _roles(options, q.shape[0])
        grid = tuple(options.get("activations_shape", [0, 0, 0, q.shape[1]])[-2:])
        latent_hw = tuple(options.get("original_shape", [0, 0, *grid])[-2:])
        call = AttnCall(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), self.kind,
                        f"{block[0]}.{block[1]}.{options.get('block_index', 0)}", slice(0, q.shape[1]),
                        slice(0, k.shape[1]) if self.kind == "cross" else None, grid, latent_hw, None, None,
                        roles, conds, options.get(RUN_KEY), block_type=block[0], block_index=block[1],
                        options=options)

        def compute(c):
            if not c.changed:
                return _split_heads(self.plain(q, k, v, options), heads)
            return c.attend()
        return _merge_heads(run_chain(chain, call, compute))


def unet_transformer_blocks(diffusion_model):
    """(block name, block number, transformer index) of every U-Net transformer block, in forward order."""
    keys = []
    for name, blocks in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                         ("output", diffusion_model.output_blocks)):
        for number, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(name, number, i) for i in range(len(layer.transformer_blocks))]
    return keys


def self_attention_layers(model):
    """Names of the model's self-attention (U-Net) or joint-attention (Flux) layers, in forward order."""
    if model_family(model) == "unet":
        return tuple(f"{b}.{n}.{i}" for b, n, i in unet_transformer_blocks(model.model.diffusion_model))
    dm = model.model.diffusion_model
    return tuple(f"double.{i}" for i in range(len(dm.double_blocks))) + \
        tuple(f"single.{i}" for i in range(len(dm.single_blocks)))


def dit_attention_override(func, *args, **kwargs):
    """optimized_attention_override for Flux: joint attention (text tokens first) through the chain."""
    options = kwargs.get("transformer_options") or {}
    prev = options.get(PREV_OVERRIDE_KEY)

    def plain():
        return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)
    chain = options.get(CHAIN_KEY)
    geometry = options.get(DIT_INFO_KEY)
    if not chain or geometry is None or not kwargs.get("skip_reshape", False):
        return plain()
    q, k, v, heads = args[:4]
    txt_len, h, w, latent_hw = geometry
    roles, conds = _roles(options, q.shape[0])
    block_type, index = options.get("block_type", "double"), options.get("block_index", 0)
    call = AttnCall(q, k, v, "joint", f"{block_type}.{index}", slice(txt_len, txt_len + h * w),
                    slice(0, txt_len), (h, w), latent_hw, None, None, roles, conds, options.get(RUN_KEY),
                    mask=kwargs.get("mask"), block_type=block_type, block_index=index, options=options)

    def compute(c):
        if not c.changed:
            out = plain()
            return out if kwargs.get("skip_output_reshape") else _split_heads(out, heads)
        return c.attend()
    out = run_chain(chain, call, compute)
    return out if kwargs.get("skip_output_reshape") else _merge_heads(out)


def record_dit_geometry(executor, x, timestep, context, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: tell the attention override the text length and the image token grid."""
    options = kwargs.get("transformer_options")
    if options is None and len(args) >= 5:
        options = args[4]
    p = executor.class_obj.patch_size
    if options is not None:
        options[DIT_INFO_KEY] = (context.shape[1], (x.shape[-2] + p // 2) // p, (x.shape[-1] + p // 2) // p,
                                 tuple(x.shape[-2:]))
    return executor(x, timestep, context, *args, **kwargs)


def install_hooks(model):
    """Install the hook adapters on `model` (a clone the caller owns); idempotent."""
    family = model_family(model)
    options = model.model_options.setdefault("transformer_options", {})
    if options.get(HOOKED_KEY):
        return family
    if family == "unet":
        replace = options.get("patches_replace", {})
        for block, number, index in unet_transformer_blocks(model.model.diffusion_model):
            for attn, kind, setter in (("attn1", "self", model.set_model_attn1_replace),
                                       ("attn2", "cross", model.set_model_attn2_replace)):
                existing = replace.get(attn, {}).get((block, number, index))
                if not isinstance(existing, UNetAttnHook):
                    setter(UNetAttnHook(kind, existing), block, number, index)
    else:
        if "optimized_attention_override" in options:
            options[PREV_OVERRIDE_KEY] = options["optimized_attention_override"]
        options["optimized_attention_override"] = dit_attention_override
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                   record_dit_geometry)
    model.model_options["transformer_options"][HOOKED_KEY] = True  # set_model_attn*_replace swaps the dict
    return family


def with_controller(model, controller):
    """A clone of `model` whose chain ends with `controller`; the input MODEL is left untouched."""
    clone = model.clone()
    install_hooks(clone)
    clone.model_options["transformer_options"][CHAIN_KEY] = chain_of(model) + (controller,)
    return clone
