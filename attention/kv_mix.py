"""ProEdit KV-mix: in the edited region the target pass's image keys/values are blended with the source's,
elsewhere the source's keys/values are injected; text K/V and every query stay those of the target pass.

K_mix = K_src + w * (K_tgt - K_src) with w = delta * R (computed with torch.lerp, so w = 0 gives K_src and
w = 1 gives K_tgt exactly); R is the mixing region per image token: the mask for "change" / "remove", everything
for "style", everything except the mask for "add" (the mask then keeps source K/V). Same for V.
"""
import torch

from .controller import Controller
from .kv_store import KV_KEY
from .token_masks import as_mask

EDIT_TYPES = ("change", "remove", "add", "style")
SOURCES = ("batch", "cache")


def mix_region(mask, edit_type):
    """Per-token mixing region R in [0, 1] from the edit mask (any shape) for an edit type."""
    if edit_type in ("change", "remove"):
        return mask
    if edit_type == "style":
        return torch.ones_like(mask)
    if edit_type == "add":
        return 1.0 - mask
    raise ValueError(f"edit_type must be one of {EDIT_TYPES}, got '{edit_type}'")


def missing_entry(step, layer, inject):
    """The error text for a K/V cache without the entry of (step, layer)."""
    return (f"KV-mix source 'inversion cache': the inversion holds no cached K/V for step {step}, layer {layer}. "
            f"Invert with this MODEL and cache_kv on with capture_steps '0-{inject - 1}' (the first inject steps; "
            f"empty capture_steps picks them), or use source 'batch'")


def mix_kv(k_tgt, k_src, weight):
    """lerp(k_src, k_tgt, weight): weight broadcast over [..., tokens, dim] as [..., tokens, 1]."""
    return torch.lerp(k_src, k_tgt, weight.to(k_tgt.dtype)[..., None].expand_as(k_tgt))


class KVMix(Controller):
    """KV-mix on the target rows of the edit sampler's batch, image tokens only, for steps < inject.

    mask: [B or 1, H, W] edit mask at any resolution (resized to each layer's token grid); None only for "style".
    source: "batch" takes K/V from the source branch's conditional rows of the same call (the item with the same
    index within its branch; when ComfyUI runs cond and uncond in separate calls, the uncond call reads the K/V the
    cond call of the same evaluation kept, and is re-run after it if it came first), "cache" from run.store["kv_cache"][(step, layer)] written by an Invert with cache_kv.
    layers: None for every self (U-Net) / joint (MMDiT) attention layer, else a collection of layer names.
    """
    technique = "KV-Mix"
    kinds = ("self", "joint")

    def __init__(self, mask, delta=0.9, inject=5, edit_type="change", source="batch", layers=None):
        if edit_type not in EDIT_TYPES:
            raise ValueError(f"edit_type must be one of {EDIT_TYPES}, got '{edit_type}'")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got '{source}'")
        if not 0.0 <= float(delta) <= 1.0:
            raise ValueError(f"delta must lie in [0, 1], got {delta}")
        if mask is None and edit_type != "style":
            raise ValueError(f"mask: edit type '{edit_type}' needs an edit mask (only 'style' mixes everywhere)")
        self.mask = None if mask is None else as_mask(mask)
        self.delta, self.inject, self.edit_type, self.source = float(delta), int(inject), edit_type, source
        self.layers = None if layers is None else frozenset(layers)

    def wants(self, call):
        return (call.kind in self.kinds and call.run is not None and call.run.phase == "edit"
                and call.step is not None and call.step < self.inject
                and (self.layers is None or call.layer in self.layers) and "target" in call.roles)

    def weights(self, call, count):
        """Mixing weights delta * R per target item, [count, n_img], on the call's device in its dtype; cached per
        (grid, device, dtype) in the run's store."""
        key = ("kv_mix_weights", id(self), tuple(call.grid), count, call.k.device, call.k.dtype)
        cached = call.run.store.get(key)
        if cached is not None:
            return cached
        n_img = call.grid[0] * call.grid[1]
        if self.mask is None:
            region = torch.ones(count, n_img, device=call.k.device)
        else:
            if self.mask.shape[0] not in (1, count):
                raise ValueError(f"mask: it has batch {self.mask.shape[0]}, the edit has {count} images per "
                                 f"branch; give one mask or one per image")
            region = mix_region(call.tokens(self.mask, torch.float32), self.edit_type).expand(count, n_img)
        w = (self.delta * region).to(call.k.dtype)
        call.run.store[key] = w
        return w

    def source_kv(self, call, count):
        """Source image-token (K, V), [count, heads, n_img, dim] each."""
        if self.source == "cache":
            cache = call.run.store.get(KV_KEY)
            entry = None if cache is None else cache.get((call.step, call.layer))
            if entry is None:
                raise ValueError(missing_entry(call.step, call.layer, self.inject))
            k, v = entry
            if k.shape[0] != count:
                raise ValueError(f"KV-mix: the K/V cache holds {k.shape[0]} images, the edit {count}; invert the "
                                 f"same latent batch you edit")
            return k.to(call.k), v.to(call.v)
        rows = call.rows("source", True)
        if len(rows) == count:
            rows = call.index(rows)
            kv = call.k[rows][:, :, call.img], call.v[rows][:, :, call.img]
            call.run.keep_partner(call.layer, "source", kv)
            return kv
        kept = call.run.partner(call.layer, "source")
        if kept is not None and kept[0].shape[0] == count:
            return kept
        if not rows and "source" in call.run.branches and call.chunks and not call.rows("target", True):
            call.run.partner_missing(call.chunks)  # cond and uncond in separate calls: re-run after the cond one
            return None
        raise ValueError(
            "KV-mix source 'batch' needs the source branch's conditional pass in the same model call as the "
            "target (the Edit Sampler's source branch). Use source 'inversion cache' instead")

    def before(self, call):
        cond_targets = call.rows("target", True)
        uncond_targets = call.rows("target", False)
        count = max(len(cond_targets), len(uncond_targets))
        source = self.source_kv(call, count)
        if source is None:
            return
        k_src, v_src = source
        w = self.weights(call, count)
        k, v = call.k.clone(), call.v.clone()
        img = call.img
        for rows in (cond_targets, uncond_targets):
            if not rows:
                continue
            idx = call.index(rows)
            k[idx, :, img] = mix_kv(call.k[idx][:, :, img], k_src, w[:, None])
            v[idx, :, img] = mix_kv(call.v[idx][:, :, img], v_src, w[:, None])
        call.set_qkv(k=k, v=v)


def cache_readers(chain):
    """The KV-mix controllers of a controller chain that read the inversion's K/V cache."""
    return [c for c in chain if isinstance(c, KVMix) and c.source == "cache"]


def cache_needs(readers, total_steps, start_step=0):
    """(steps, layers) the readers look up in the cache: steps start_step .. inject-1; layers None = every layer."""
    steps, layers = set(), set()
    for r in readers:
        steps.update(range(start_step, min(r.inject, total_steps)))
        layers = None if layers is None or r.layers is None else layers | r.layers
    return steps, layers


def check_cache(readers, cache, total_steps, all_layers, start_step=0):
    """A clear error before sampling when the readers would look up a (step, layer) the cache lacks."""
    steps, layers = cache_needs(readers, total_steps, start_step)
    cached = set(cache or ())
    for step in sorted(steps):
        for layer in all_layers if layers is None else sorted(layers):
            if (step, layer) not in cached:
                raise ValueError(missing_entry(step, layer, max(r.inject for r in readers)))
