"""MMDiT families beyond FLUX.1: SD3 / SD3.5 (MMDiT), Qwen-Image and Lumina 2 / Z-Image (NextDiT).

Each family's joint attention goes through the same AttnCall / controller chain as Flux, by the same public
patch points: transformer_options["optimized_attention_override"] for the attention itself, and an APPLY_MODEL
wrapper (SD3's MMDiT has no DIFFUSION_MODEL wrapper point) that records, per model call, the latent size and text
length and re-asserts the pack's override over one a later node set (that one then runs under the pack's).

What a family adapter knows:
- its attention calls in forward order, each a layer name and a kind. "joint" calls ([text, image] tokens, text
  first) go through the chain; "text" (Lumina's context refiner) and "image" calls (Lumina's noise refiner, the
  image-only second attention of SD3.5 Medium's dual-attention blocks) are passed through untouched, so no
  technique mistakes them for joint layers.
- which call this is: Qwen-Image sets transformer_options["block_index"]; SD3 and Lumina do not, so the calls of
  one model forward are counted (the APPLY_MODEL wrapper resets the count; modulo the calls per forward).
- the token layout: the image tokens' slice and grid (patch size 2; Qwen-Image packs 2x2 patches, Lumina pads the
  caption and image tokens to a multiple of pad_tokens_multiple on Z-Image; reference latents of Qwen-Image-Edit
  follow the image tokens) and the attention layout (SD3: [B, L, heads*dim]; Qwen-Image and Lumina: [B, H, L, D]).

Layer names (self_attention_layers, K/V caches, Edit Mask From Attention): "double.<i>" for the dual-stream
blocks of SD3 and Qwen-Image (separate text and image weights, like Flux double blocks), "single.<i>" for Lumina's
single-stream joint layers (like Flux single blocks).
"""
import math

from comfy.ldm.lumina.model import NextDiT
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

from . import hooks
from .context import AttnCall
from .controller import CHAIN_KEY, RUN_KEY, run_chain

FORWARD_KEY = "edit_pack_dit_forward"


def _padded(n, multiple):
    return n + (-n) % multiple if multiple else n


class Family:
    """One model family: which diffusion model class, its attention calls, its token layout."""
    name = label = ""
    model_class = None
    packed = False        # q, k, v as [B, L, heads*dim] (skip_reshape False) instead of [B, H, L, D]
    pad_left = False      # shorter prompts are padded on the left (where positions after the text depend on its length)
    counted = True        # the layer of a call is found by counting the calls of a forward

    def matches(self, dm):
        return isinstance(dm, self.model_class)

    def calls(self, dm):
        """((layer name, kind), ...) of every attention call with transformer_options, in forward order."""
        raise NotImplementedError

    def width(self, dm):
        """Channels (heads x head_dim) of the joint attention's K/V."""
        raise NotImplementedError

    def slices(self, dm, length, n_img, txt_len):
        """(text slice, image slice) of a joint call over `length` tokens."""
        raise NotImplementedError

    def prompt_start(self, dm, txt):
        """The key of the conditioning's first token (tokens the model prepends inside its forward come before)."""
        return txt.start

    def joint_layers(self, dm):
        return tuple(name for name, kind in self.calls(dm) if kind == "joint")


class SD3Family(Family):
    """SD3 / SD3.5 MMDiT: joint attention per block over [context (+ registers), image], [B, L, H*D]; SD3.5
    Medium's blocks 0-12 add an image-only second attention (x_block.attn2), passed through."""
    name, label, model_class, packed = "sd3", "SD3 / SD3.5 (MMDiT)", MMDiT, True

    def calls(self, dm):
        out = []
        for i, block in enumerate(dm.joint_blocks):
            out.append((f"double.{i}", "joint"))
            if block.x_block.x_block_self_attn:
                out.append((f"double.{i}.attn2", "image"))
        return tuple(out)

    def width(self, dm):
        return dm.hidden_size

    def slices(self, dm, length, n_img, txt_len):
        return slice(0, length - n_img), slice(length - n_img, length)

    def prompt_start(self, dm, txt):
        return txt.start + dm.register_length  # the registers come before the context


class QwenImageFamily(Family):
    """Qwen-Image: joint attention per block over [text, image (2x2 packed patches), reference latents]."""
    name, label, model_class, counted = "qwen_image", "Qwen-Image", QwenImageTransformer2DModel, False

    def calls(self, dm):
        return tuple((f"double.{i}", "joint") for i in range(len(dm.transformer_blocks)))

    def width(self, dm):
        return dm.inner_dim

    def slices(self, dm, length, n_img, txt_len):
        return slice(0, txt_len), slice(txt_len, txt_len + n_img)


class LuminaFamily(Family):
    """Lumina 2 / Z-Image NextDiT: text-only context refiner and image-only noise refiner layers (passed through),
    then single-stream joint layers over [caption, image]; Z-Image pads both to a multiple of 32 tokens."""
    name, label, model_class = "lumina2", "Lumina 2 / Z-Image (NextDiT)", NextDiT
    pad_left = True  # the image tokens' positions start after the caption: left padding keeps them relative

    def calls(self, dm):
        return (tuple((f"context_refiner.{i}", "text") for i in range(len(dm.context_refiner)))
                + tuple((f"noise_refiner.{i}", "image") for i in range(len(dm.noise_refiner)))
                + tuple((f"single.{i}", "joint") for i in range(len(dm.layers))))

    def width(self, dm):
        return dm.dim

    def slices(self, dm, length, n_img, txt_len):
        img_start = length - _padded(n_img, dm.pad_tokens_multiple)
        return slice(0, img_start), slice(img_start, img_start + n_img)


FAMILIES = (SD3Family(), QwenImageFamily(), LuminaFamily())


def family_of(dm):
    """The Family adapter of a diffusion model, or None (U-Net, Flux, unsupported)."""
    return next((f for f in FAMILIES if f.matches(dm)), None)


def diffusion_model(model):
    return getattr(getattr(model, "model", None), "diffusion_model", None)


def token_grid(dm, hw):
    """(h, w) of the image tokens of a latent of spatial size hw (padded up to whole patches)."""
    p = dm.patch_size
    return math.ceil(hw[0] / p), math.ceil(hw[1] / p)


def layer_shapes(family, dm, latent_hw):
    """{joint layer: (image tokens, channels)} for a latent of spatial size latent_hw."""
    h, w = token_grid(dm, latent_hw)
    return {name: (h * w, family.width(dm)) for name in family.joint_layers(dm)}


class Forward:
    """What the attention calls of one model call need: the family, token grid, text length, call count."""

    def __init__(self, family, dm, latent_hw, txt_len):
        self.family, self.dm = family, dm
        self.plan = family.calls(dm)
        self.latent_hw = tuple(latent_hw)
        self.grid = token_grid(dm, latent_hw)
        self.txt_len = txt_len
        self.count = 0

    def __deepcopy__(self, memo):
        return self

    def next_call(self, options):
        """(layer name, kind, block index) of the attention call now running."""
        if not self.family.counted:
            index = options.get("block_index", 0)
            return self.plan[index][0], self.plan[index][1], index
        name, kind = self.plan[self.count % len(self.plan)]
        self.count += 1
        return name, kind, int(name.split(".")[1])


class FamilyHooks(hooks._Wrapper):
    """APPLY_MODEL wrapper of a hooked MODEL of a Family: records the forward's geometry in the per-call
    transformer_options and puts the pack's override back in front of one a later node set."""

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        if transformer_options is not None:
            self.dit(transformer_options, family_attention_override)
            dm = executor.class_obj.diffusion_model
            transformer_options[FORWARD_KEY] = Forward(family_of(dm), dm, x.shape[-2:],
                                                       0 if c_crossattn is None else c_crossattn.shape[1])
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    dit = hooks.ReassertHooks.dit
    note = hooks.ReassertHooks.note


def _heads_first(t, heads):
    """[B, L, heads*dim] (or SD3's V, [B, L, heads, dim]) -> [B, heads, L, dim]."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def family_attention_override(func, *args, **kwargs):
    """optimized_attention_override for the families: joint calls through the chain, the rest passed through."""
    if hooks._IN_FOREIGN.get():
        return func(*args, **kwargs)
    options = kwargs.get("transformer_options") or {}
    prev = options.get(hooks.PREV_OVERRIDE_KEY)

    def plain(*qkv, mask=None):
        qkv = qkv or args[:3]
        call_args, call_kwargs = args[3:], kwargs
        if mask is not None and len(args) > 4:  # the padding of shorter prompts, as the kernel's mask
            call_args = (*args[3:4], mask, *args[5:])
        elif mask is not None:
            call_kwargs = {**kwargs, "mask": mask}
        if prev is None:
            return func(*qkv, *call_args, **call_kwargs)
        return hooks._foreign(prev, func, *qkv, *call_args, **call_kwargs)
    forward = options.get(FORWARD_KEY)
    if forward is None:
        return plain()
    layer, kind, index = forward.next_call(options)
    chain = options.get(CHAIN_KEY) or ()
    padded = hooks.padded_prompts(options)
    if kind == "text" and padded:  # a text-only layer (Lumina's context refiner): the prompts' padding masked
        return _masked_text(args, kwargs, plain, options, forward)
    if not (chain or padded) or kind != "joint":
        return plain()
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    packed = not kwargs.get("skip_reshape", False)
    if packed:
        q, k, v = (_heads_first(t, heads) for t in (q, k, v))
    h, w = forward.grid
    txt, img = forward.family.slices(forward.dm, q.shape[2], h * w, forward.txt_len)
    roles, conds = hooks._roles(options, q.shape[0])
    call = AttnCall(q, k, v, "joint", layer, img, txt, forward.grid, forward.latent_hw, None, None, roles, conds,
                    options.get(RUN_KEY), mask=kwargs.get("mask", args[4] if len(args) > 4 else None),
                    block_type=layer.split(".")[0], block_index=index, options=options,
                    prompt_start=forward.family.prompt_start(forward.dm, txt))

    def compute(c):
        if c.plain or prev is not None:  # another node's kernel: also on the K/V the technique chose
            qkv = (hooks._merge_heads(t) for t in (c.q, c.k, c.v)) if packed else (c.q, c.k, c.v)
            out = plain(*qkv, mask=c.bias() if c.masked else None)
            return out if kwargs.get("skip_output_reshape") else hooks._split_heads(out, heads)
        return c.attend()
    out = run_chain(chain, call, compute)
    return out if kwargs.get("skip_output_reshape") else hooks._merge_heads(out)


def _masked_text(args, kwargs, plain, options, forward):
    """A text-only attention call (keys: the conditioning's tokens, then any the model appends) with the keys that
    pad a shorter prompt masked, through the kernel the call would have used."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    packed = not kwargs.get("skip_reshape", False)
    kh = _heads_first(k, heads) if packed else k
    roles, conds = hooks._roles(options, kh.shape[0])
    call = AttnCall(_heads_first(q, heads) if packed else q, kh, _heads_first(v, heads) if packed else v, "text",
                    "text", slice(0, 0), slice(0, kh.shape[2]), forward.grid, forward.latent_hw, None, None, roles,
                    conds, options.get(RUN_KEY), mask=kwargs.get("mask", args[4] if len(args) > 4 else None),
                    options=options)
    return plain(mask=None if call.key_bias is None else call.bias())


def pads_left(model):
    """Whether a MODEL's shorter prompts are padded on the left (its family's positions need it)."""
    adapter = family_of(diffusion_model(model))
    return adapter is not None and adapter.pad_left


def text_multiple(model):
    """The multiple a MODEL pads its caption to itself with a learned token it attends (Z-Image: 32), or None."""
    dm = diffusion_model(model)
    return getattr(dm, "pad_tokens_multiple", None) if family_of(dm) is not None else None


def family_key(model):
    """'unet', 'flux' or the Family name of a MODEL (after hooks.model_family accepted it)."""
    family = hooks.model_family(model)
    if family == "unet":
        return family
    adapter = family_of(diffusion_model(model))
    return adapter.name if adapter is not None else "flux"


def refuse(model, technique, reason):
    """A clear error naming the model family and the technique that cannot apply on it."""
    return hooks.UnsupportedModelError(
        f"model: {technique} does not apply to {hooks.family_name(model)} models: {reason}")
