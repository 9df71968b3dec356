"""Hook adapters: route every U-Net and Flux-family MMDiT (FLUX.1, Kontext, FLUX.2, Chroma) attention call of a
MODEL clone through its controller chain.

Only ComfyUI's public patch points are used: attn1/attn2 replace patches on U-Net transformer blocks, and
transformer_options["optimized_attention_override"] plus a DIFFUSION_MODEL wrapper (text length and token
grid) on Flux.

Working beside other nodes' patches, in any node order: the pack's U-Net hook calls the replace patch another
node put on its layer (at the 3-tuple key, kept as `fallback`, or at the block-level key (block, number), looked up
at call time) for the attention itself, with the K/V a technique chose; an IP-Adapter-style `.add` on the hook is
honoured. A DIFFUSION_MODEL wrapper re-asserts the hooks at run time: a patch a later node (or a post-CFG function
such as SAG's) wrote over a pack hook's key is wrapped as that hook's fallback, and on Flux a later node's
optimized_attention_override becomes the kernel under the pack's override, so both apply.
"""
import contextvars
import copy
import logging

import comfy.ldm.chroma.model
import comfy.ldm.flux.model
import comfy.model_base
import comfy.patcher_extension
from comfy.ldm.modules import attention as comfy_attention
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from .context import AttnCall
from .controller import CHAIN_KEY, RUN_KEY, chain_of, run_chain
from .run_check import add_run_check
from .run_state import MISSING_KEY
from .text_keys import text_keys_of

HOOKED_KEY = "edit_pack_hooked"
DIT_INFO_KEY = "edit_pack_dit_geometry"
PREV_OVERRIDE_KEY = "edit_pack_prev_attention_override"
WRAPPER_KEY = "edit_pack"
ATTN_NAMES = {"self": "attn1", "cross": "attn2"}

log = logging.getLogger(__name__)
# Set while another node's patch or override runs under a pack hook: if that patch chains to the one it replaced
# (the pack's own hook), the pack's hook then acts as plain attention, so a technique never runs twice or recurses.
_IN_FOREIGN = contextvars.ContextVar("edit_pack_in_foreign_attention", default=False)


def _foreign(fn, *args, **kwargs):
    token = _IN_FOREIGN.set(True)
    try:
        return fn(*args, **kwargs)
    finally:
        _IN_FOREIGN.reset(token)


class UnsupportedModelError(ValueError):
    pass


# Flux-architecture MMDiT classes the hooks serve (text tokens first, then the image tokens, then any reference
# tokens: FLUX.1 Kontext / FLUX.2 reference latents), with the position of transformer_options among the positional
# arguments their forward hands the DIFFUSION_MODEL wrappers after (x, timestep, context).
FLUX_CLASSES = ((comfy.ldm.chroma.model.Chroma, 2), (comfy.ldm.flux.model.Flux, 4))

# Families ComfyUI 0.3.75 runs that the pack refuses (comfy.model_base class, name, why); docs/model_families.md
# says what support would take. Checked before the supported classes (Chroma Radiance subclasses Chroma).
REFUSED_FAMILIES = (
    (comfy.model_base.ChromaRadiance, "Chroma Radiance",
     "a pixel-space model: its 'latent' is the image itself, which the pack's masks and latent operations do not "
     "expect"),
    (comfy.model_base.HiDream, "HiDream", "its attention (image tokens first, per-block Llama-3 text) has no "
                                          "adapter yet"),
    (comfy.model_base.HunyuanImage21, "HunyuanImage 2.1", "its joint attention puts the image tokens first and "
                                                          "pads the text with a mask; no adapter yet"),
    (comfy.model_base.WAN21, "Wan", "a video model whose text attention is a separate cross-attention over "
                                    "frame x height x width tokens; no adapter yet"),
)
SUPPORTED = ("SD1.x, SD2.x and SDXL U-Nets, FLUX.1 (and Kontext), FLUX.2, Chroma, SD3 / SD3.5, Qwen-Image and "
             "Lumina 2 / Z-Image")


def family_name(model):
    """The family a MODEL belongs to, in words, for messages: 'FLUX.2', 'Chroma', 'SD1.x/SD2.x/SDXL U-Net', ..."""
    base = getattr(model, "model", None)
    for cls, name in ((comfy.model_base.Flux2, "FLUX.2"), (comfy.model_base.ChromaRadiance, "Chroma Radiance"),
                      (comfy.model_base.Chroma, "Chroma"), (comfy.model_base.Flux, "FLUX.1")):
        if isinstance(base, cls):
            return name
    for cls, name, _ in REFUSED_FAMILIES:
        if isinstance(base, cls):
            return name
    dm = getattr(base, "diffusion_model", None)
    from .dit_families import family_of
    if family_of(dm) is not None:
        return family_of(dm).label
    return "SD1.x/SD2.x/SDXL U-Net" if isinstance(dm, UNetModel) else type(dm if dm is not None else model).__name__


def model_family(model):
    """'unet' for U-Net models (SD1.x, SD2.x, SDXL), 'dit' for Flux-family MMDiT (FLUX.1, Kontext, FLUX.2,
    Chroma) and the joint-attention families of attention/dit_families.py (SD3/SD3.5, Qwen-Image, Lumina 2 /
    Z-Image); otherwise a clear error naming the family."""
    from .dit_families import family_of
    base = getattr(model, "model", None)
    for cls, name, why in REFUSED_FAMILIES:
        if isinstance(base, cls):
            raise UnsupportedModelError(
                f"model: {name} is not supported by the edit pack ({why}); it supports {SUPPORTED}. "
                f"See docs/model_families.md.")
    dm = getattr(base, "diffusion_model", None)
    if isinstance(dm, UNetModel):
        return "unet"
    if isinstance(dm, tuple(cls for cls, _ in FLUX_CLASSES)) or family_of(dm) is not None:
        return "dit"
    name = type(dm).__name__ if dm is not None else type(model).__name__
    raise UnsupportedModelError(
        f"model: the edit pack patches {SUPPORTED}; this MODEL's diffusion model is {name}. "
        f"Load a supported checkpoint.")


def flux_options_index(diffusion_model):
    """Where transformer_options sits among a Flux-family forward's positional arguments after (x, t, context)."""
    return next(index for cls, index in FLUX_CLASSES if isinstance(diffusion_model, cls))


def _roles(options, batch):
    run = options.get(RUN_KEY)
    if run is None:
        return ["target"] * batch, [True] * batch
    return run.row_roles(batch, options.get("cond_or_uncond") or [0])


def padded_prompts(options):
    """Whether this call's run padded some branch's prompt: its text keys must then be masked (an AttnCall built and
    attended, c.plain false), chain or not. Every family's hook asks this with its chain."""
    keys = text_keys_of(options.get(RUN_KEY))
    return keys is not None and keys.padded


def _split_heads(t, heads):
    return t.view(t.shape[0], t.shape[1], heads, t.shape[2] // heads).transpose(1, 2)


def _merge_heads(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], t.shape[1] * t.shape[3])


class UNetAttnHook:
    """attn1 (self) / attn2 (cross) replace patch for one U-Net transformer block.

    fallback: the replace patch another node had on this 3-tuple key (called for the attention itself); without
    one, a block-level patch (block, number) found in the call's patches_replace is used (the DIFFUSION_MODEL
    wrapper resolves it per call). added: (callback, kwargs) pairs from IP-Adapter-style `.add` calls; each adds
    callback(out, q, k, v, extra_options, **kwargs) to the output while sigma_end <= sigma <= sigma_start.
    """

    def __init__(self, kind, fallback=None, added=()):
        self.kind, self.fallback, self.added = kind, fallback, list(added)

    def __deepcopy__(self, memo):  # a fresh hook per MODEL clone, so `.add` on a clone never reaches its input
        return UNetAttnHook(self.kind, copy.deepcopy(self.fallback, memo), self.added)

    def with_fallback(self, fallback):
        return UNetAttnHook(self.kind, fallback, self.added)

    def add(self, callback, **kwargs):
        """IP-Adapter-style extension (ComfyUI_IPAdapter_plus calls `.add` on the patch already at its key)."""
        if self.fallback is not None and callable(getattr(self.fallback, "add", None)):
            self.fallback.add(callback, **kwargs)
        else:
            self.added.append((callback, kwargs))

    def plain(self, q, k, v, options, mask=None):
        if self.fallback is not None:
            return _foreign(self.fallback, q, k, v, options)
        return comfy_attention.optimized_attention(q, k, v, options["n_heads"], mask=mask,
                                                   attn_precision=options.get("attn_precision"),
                                                   transformer_options=options)

    def __call__(self, q, k, v, options):
        out = self.attend(q, k, v, options)
        if not self.added:
            return out
        sigmas = options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if sigmas is not None else 999999999.9
        for callback, kwargs in self.added:
            if kwargs.get("sigma_end", -1e30) <= sigma <= kwargs.get("sigma_start", 1e30):
                out = out + callback(out, q, k, v, options, **kwargs)
        return out.to(q.dtype)

    def attend(self, q, k, v, options):
        chain = options.get(CHAIN_KEY) or ()
        if _IN_FOREIGN.get() or not (chain or (self.kind == "cross" and padded_prompts(options))):
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
            if c.plain:
                return _split_heads(self.plain(q, k, v, options), heads)
            if self.fallback is not None:  # another node's attention, on the K/V the technique chose
                c.warn_unmasked(f"another node's attention patch on {c.layer} (it takes no mask)")
                return _split_heads(self.plain(q, _merge_heads(c.k), _merge_heads(c.v), options), heads)
            if "optimized_attention_override" in options:  # another node's kernel: given the bias as its mask
                return _split_heads(self.plain(q, _merge_heads(c.k), _merge_heads(c.v), options,
                                               c.bias() if c.masked else None), heads)
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
    """Names of the model's self-attention (U-Net) or joint-attention (MMDiT) layers, in forward order."""
    from .dit_families import family_of
    if model_family(model) == "unet":
        return tuple(f"{b}.{n}.{i}" for b, n, i in unet_transformer_blocks(model.model.diffusion_model))
    dm = model.model.diffusion_model
    if family_of(dm) is not None:
        return family_of(dm).joint_layers(dm)
    return tuple(f"double.{i}" for i in range(len(dm.double_blocks))) + \
        tuple(f"single.{i}" for i in range(len(dm.single_blocks)))


def dit_attention_override(func, *args, **kwargs):
    """optimized_attention_override for the Flux family: joint attention through the chain. Layout: text tokens,
    image tokens, then any reference tokens (Kontext / FLUX.2 reference latents), which are not in call.img."""
    if _IN_FOREIGN.get():  # called back by another node's override that chains to this one: the plain kernel
        return func(*args, **kwargs)
    options = kwargs.get("transformer_options") or {}
    prev = options.get(PREV_OVERRIDE_KEY)

    def plain(*qkv, mask=None):
        qkv = qkv or args[:3]
        call_kwargs = kwargs if mask is None else {**kwargs, "mask": mask}
        if prev is None:
            return func(*qkv, *args[3:], **call_kwargs)
        return _foreign(prev, func, *qkv, *args[3:], **call_kwargs)
    chain = options.get(CHAIN_KEY) or ()
    geometry = options.get(DIT_INFO_KEY)
    if not (chain or padded_prompts(options)) or geometry is None or not kwargs.get("skip_reshape", False):
        return plain()
    q, k, v, heads = args[:4]
    txt_len, h, w, latent_hw = geometry
    roles, conds = _roles(options, q.shape[0])
    block_type, index = options.get("block_type", "double"), options.get("block_index", 0)
    call = AttnCall(q, k, v, "joint", f"{block_type}.{index}", slice(txt_len, txt_len + h * w),
                    slice(0, txt_len), (h, w), latent_hw, None, None, roles, conds, options.get(RUN_KEY),
                    mask=kwargs.get("mask"), block_type=block_type, block_index=index, options=options)

    def compute(c):
        if c.plain or prev is not None:
            # unchanged, or another node's kernel: also on the K/V the technique chose, given the padding as mask
            out = plain(c.q, c.k, c.v, mask=c.bias() if c.masked else None)
            return out if kwargs.get("skip_output_reshape") else _split_heads(out, heads)
        return c.attend()
    out = run_chain(chain, call, compute)
    return out if kwargs.get("skip_output_reshape") else _merge_heads(out)


def _call_options(args, kwargs, index):
    """The transformer_options a diffusion model's forward got (keyword, or positional at `index` after x,
    timestep, context)."""
    options = kwargs.get("transformer_options")
    if options is None and len(args) > index:
        options = args[index]
    return options


class _Wrapper:
    """A wrapper object shared by every clone of a MODEL, that logs each message once."""

    def __init__(self):
        self.told = set()

    def __deepcopy__(self, memo):
        return self

    def tell(self, level, message):
        if message not in self.told:
            self.told.add(message)
            log.log(level, "Attention Edit: %s", message)


class ReassertHooks(_Wrapper):
    """DIFFUSION_MODEL wrapper of a hooked MODEL: puts the pack's hooks back in front of whatever another node
    (applied after the pack, or at run time from a post-CFG function) wrote over them, keeping that node's patch
    as the plain attention under the pack's hook; on Flux also records the text length and token grid.
    Works on the per-call transformer_options only; the MODEL's own options are never touched."""

    def __init__(self, block_keys=()):
        super().__init__()
        self.block_keys = tuple(block_keys)

    def __call__(self, executor, x, timestep, context, *args, **kwargs):
        dm = executor.class_obj
        if isinstance(dm, UNetModel):
            options = _call_options(args, kwargs, 2)
            if options is not None:
                self.unet(options)
        else:
            options = _call_options(args, kwargs, flux_options_index(dm))
            if options is not None:
                self.dit(options)
                # the text length as the model sees it: FLUX.2's prompts arrive left-padded to 512 tokens
                # (Flux2.extra_conds); word positions must be shifted by that padding (per-branch conditioning)
                p = dm.patch_size  # the model pads the latent up to whole patches
                options[DIT_INFO_KEY] = (context.shape[1], -(-x.shape[-2] // p), -(-x.shape[-1] // p),
                                         tuple(x.shape[-2:]))
        return executor(x, timestep, context, *args, **kwargs)

    def note(self, what):
        self.tell(logging.INFO, f"{what}; the pack's hook now wraps it, so both apply")

    def dit(self, options, override=dit_attention_override):
        current = options.get("optimized_attention_override")
        if current is not override:
            if current is not None:
                self.note("a node applied after the pack set optimized_attention_override")
            options[PREV_OVERRIDE_KEY] = current
            options["optimized_attention_override"] = override

    def unet(self, options):
        replace = options.get("patches_replace") or {}
        changed = {}
        for block, number, index in self.block_keys:
            for kind, attn in ATTN_NAMES.items():
                patches = changed.get(attn, replace.get(attn) or {})
                entry = patches.get((block, number, index))
                if isinstance(entry, UNetAttnHook):
                    if entry.fallback is not None:
                        continue
                    other = patches.get((block, number))  # a block-level patch ComfyUI would have used
                    if other is None or isinstance(other, UNetAttnHook):
                        continue
                    hook = entry.with_fallback(other)
                else:
                    if entry is not None:
                        self.note(f"a node applied after the pack replaced {attn} of layer {block}.{number}.{index}")
                    hook = UNetAttnHook(kind, entry if entry is not None else patches.get((block, number)))
                if attn not in changed:
                    changed[attn] = dict(patches)
                changed[attn][(block, number, index)] = hook
        if changed:
            options["patches_replace"] = {**replace, **changed}


class RerunSplitPasses(_Wrapper):
    """CALC_COND_BATCH wrapper: when ComfyUI ran cond and uncond in separate model calls (memory, differing
    ControlNets) and a technique found its partner rows (the source's cond rows) missing in a call that came first,
    that call's passes are run again after the others, now reading the partner K/V the later call kept."""

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        run = model_options.get("transformer_options", {}).get(RUN_KEY)
        if run is None:
            return executor(model, conds, x_in, timestep, model_options)
        run.begin_eval()
        out = executor(model, conds, x_in, timestep, model_options)
        missing = run.store.pop(MISSING_KEY, None)
        if not missing:
            return out
        again = [c if i in missing else None for i, c in enumerate(conds)]
        redo = executor(model, again, x_in, timestep, model_options)
        out = [redo[i] if i in missing else o for i, o in enumerate(out)]
        if run.store.pop(MISSING_KEY, None):
            self.tell(logging.WARNING, "cond and uncond ran in separate model calls and a technique's partner rows "
                                       "(the source branch's cond pass) were not available to the uncond pass; it "
                                       "ran without them")
        else:
            self.tell(logging.INFO, "cond and uncond ran in separate model calls; passes that need the source's "
                                    "cond K/V are run again after it (one extra pass per affected step)")
        return out


def install_hooks(model):
    """Install the hook adapters on `model` (a clone the caller owns); idempotent."""
    family = model_family(model)
    options = model.model_options.setdefault("transformer_options", {})
    if options.get(HOOKED_KEY):
        return family
    from . import dit_families
    wrap = comfy.patcher_extension.WrappersMP
    if family == "unet":
        replace = options.get("patches_replace", {})
        keys = unet_transformer_blocks(model.model.diffusion_model)
        for block, number, index in keys:
            for attn, kind, setter in (("attn1", "self", model.set_model_attn1_replace),
                                       ("attn2", "cross", model.set_model_attn2_replace)):
                existing = replace.get(attn, {}).get((block, number, index))
                if not isinstance(existing, UNetAttnHook):
                    setter(UNetAttnHook(kind, existing), block, number, index)
        wrapper = wrap.DIFFUSION_MODEL, ReassertHooks(keys)
    else:
        if "optimized_attention_override" in options:
            options[PREV_OVERRIDE_KEY] = options["optimized_attention_override"]
        if dit_families.family_of(model.model.diffusion_model) is None:  # Flux
            options["optimized_attention_override"] = dit_attention_override
            wrapper = wrap.DIFFUSION_MODEL, ReassertHooks()
        else:  # SD3/SD3.5, Qwen-Image, Lumina 2 / Z-Image (SD3 has no DIFFUSION_MODEL wrapper point)
            options["optimized_attention_override"] = dit_families.family_attention_override
            wrapper = wrap.APPLY_MODEL, dit_families.FamilyHooks()
    model.add_wrapper_with_key(wrapper[0], WRAPPER_KEY, wrapper[1])
    model.add_wrapper_with_key(wrap.CALC_COND_BATCH, WRAPPER_KEY, RerunSplitPasses())
    model.model_options["transformer_options"][HOOKED_KEY] = True  # set_model_attn*_replace swaps the dict
    return family


def with_controller(model, controller):
    """A clone of `model` whose chain ends with `controller`; the input MODEL is left untouched."""
    clone = model.clone()
    install_hooks(clone)
    clone.model_options["transformer_options"][CHAIN_KEY] = chain_of(model) + (controller,)
    add_run_check(clone)
    return clone
