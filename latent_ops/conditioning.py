"""Lay out one CONDITIONING per branch as one batched CONDITIONING whose rows keep their own branch's options.

Rows are [branch0 x per_branch, branch1 x per_branch, ...]. Prompts of any token lengths: every prompt (and the
negative), in the form the model pads it to itself, is padded with zeros to the longest (on the right; on the
left for a family whose positions after the text depend on its length, Lumina 2), and those padded text keys
are masked out of attention (attention/text_keys.py, through the run state). What the model computes from a branch's options (FLUX guidance,
SDXL size conditioning, Kontext reference latents, ...) reaches that branch's rows (branch_inputs.py); a
ControlNet reaches the rows of the branches it was applied to (branch_control.py). Options the sampler applies to a
whole model call (area, mask, timestep range, hooks, GLIGEN) cannot differ between branches: a clear error.
"""
from dataclasses import dataclass

import comfy.samplers
import torch

from ..attention.dit_families import pads_left, text_multiple
from ..attention.text_keys import TextKeys

# Options ComfyUI's sampler applies to whole model calls (comfy/samplers.py get_area_and_mult, hooks, GLIGEN).
CALL_OPTIONS = ("area", "strength", "mask", "mask_strength", "set_area_to_bounds", "timestep_start",
                "timestep_end", "start_percent", "end_percent", "hooks", "gligen", "default")
CONTROL_OPTIONS = ("control", "control_apply_to_uncond")  # per branch: branch_control.py


def _single(cond, name):
    if not cond:
        raise ValueError(f"{name}: empty CONDITIONING")
    if len(cond) != 1:
        raise ValueError(f"{name}: combined/area conditionings ({len(cond)} entries) cannot drive one edit branch; "
                         f"encode one prompt per branch")
    return cond[0]


def repeat_rows(t, rows, name):
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.repeat(rows, *([1] * (t.ndim - 1)))
    raise ValueError(f"{name}: conditioning batch {t.shape[0]} does not match the latent batch {rows}")


def same(a, b):
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b.to(a))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==: only identity counts
        return False


def model_conds(model, tensor, options, noise):
    """The model inputs ComfyUI's sampler makes from one conditioning entry (its encode_model_conds)."""
    entry = {k: v for k, v in options.items() if k not in CONTROL_OPTIONS}
    entry.update(cross_attn=tensor, model_conds={})
    out = comfy.samplers.encode_model_conds(model.model.extra_conds, [entry], noise, noise.device, "positive",
                                            latent_image=noise, denoise_mask=None, seed=0)
    return out[0]["model_conds"]


def model_text(model, tensor, options):
    """(tokens, shift): a prompt's tokens as the model will see them, with the padding it adds itself (Flux.2 pads
    on the left to 512 tokens), and the count of keys it put before them; (tensor, 0) when it adds none, or when
    it would pad the padded form again (then it pads at sampling time, and the run's TextKeys assume the left)."""
    noise = torch.zeros(1, model.model.latent_format.latent_channels, 8, 8)
    seen = model_conds(model, tensor, options, noise).get("c_crossattn")
    own = getattr(seen, "cond", None)
    n = tensor.shape[1]
    if not torch.is_tensor(own) or own.ndim != 3 or own.shape[0] != tensor.shape[0] or own.shape[1] <= n:
        return tensor, 0
    if model_conds(model, own, options, noise)["c_crossattn"].cond.shape != own.shape:
        return tensor, 0
    for shift in (own.shape[1] - n, 0):
        if torch.equal(own[:, shift:shift + n], tensor.to(own)):
            return own.to(tensor), shift
    return tensor, 0


def text_layout(model, cond, role):
    """(CONDITIONING in the model's own padded form, TextKeys) of one prompt driving rows of `role`: maps the
    prompt's word positions to text keys (TextKeys.columns)."""
    tensor, options = _single(cond, f"{role} conditioning")
    own, shift = model_text(model, tensor, options)
    return [[own, options]], TextKeys(own.shape[1], {(role, True): (shift, 0, own.shape[1])})


def _pad(tensor, length, left=False, dim=1):
    """Zeros up to `length` along `dim`, on the right (or the left)."""
    if tensor.shape[dim] == length:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = length - tensor.shape[dim]
    zeros = tensor.new_zeros(shape)
    return torch.cat([zeros, tensor] if left else [tensor, zeros], dim)


def _pad_options(options, n, length, left=False):
    """A branch's options for its prompt padded from n to `length` tokens: a per-token 'attention_mask' the encoder
    gave (Lumina 2's) is padded with zeros (masked) alike."""
    mask = options.get("attention_mask")
    if not torch.is_tensor(mask) or mask.shape[-1] != n or n == length:
        return options
    return {**options, "attention_mask": _pad(mask, length, left, dim=mask.ndim - 1)}


@dataclass
class Layout:
    positive: list          # the batched CONDITIONING of every branch (options: the first branch's)
    negative: list          # the negative repeated for every branch's rows, or None
    text_keys: TextKeys     # token counts per row: the padded text keys the attention masks out
    entries: list           # (tokens, options) of each branch padded to the common length (its own model inputs)
    controls: list          # each branch's ControlNet (or None)
    to_uncond: list         # whether each branch's ControlNet also applies to its unconditional rows


def _check_call_options(entries, names):
    for key in {k for _, opts in entries for k in opts if k in CALL_OPTIONS}:
        first = entries[0][1].get(key)
        for (_, opts), name in zip(entries[1:], names[1:]):
            if not same(opts.get(key), first):
                raise ValueError(
                    f"{name}: its '{key}' option differs from the {names[0]}'s. ComfyUI's sampler applies area, "
                    f"mask, strength, timestep-range, hook and GLIGEN options to whole model calls, and every branch "
                    f"runs in one call: give every branch the same '{key}' (or none), e.g. apply the node that set "
                    f"it to each branch's conditioning alike")


def lay_out(model, conds, names, roles, per_branch, negative=None):
    """The Layout of these branch conditionings (roles: the branches' roles, in order) for `model`."""
    entries = [_single(c, n) for c, n in zip(conds, names)]
    neg = _single(negative, "negative") if negative is not None else None
    for (tensor, _), name in zip(entries + ([neg] if neg else []), names + ["negative"]):
        if not torch.is_tensor(tensor) or tensor.ndim != 3:
            raise ValueError(f"{name}: expected conditioning tokens [batch, tokens, channels], got "
                             f"{getattr(tensor, 'shape', type(tensor).__name__)}")
    widths = {t.shape[2] for t, _ in entries + ([neg] if neg else [])}
    if len(widths) > 1:
        raise ValueError(f"{', '.join(names)}: the conditionings have different channel widths {sorted(widths)}; "
                         f"encode every prompt with the same text encoder")
    _check_call_options(entries, names)
    texts = [model_text(model, t, opts) for t, opts in entries]  # each prompt as the model pads it itself
    neg_text = model_text(model, *neg) if neg else None
    length = max(t.shape[1] for t, _ in texts + ([neg_text] if neg else []))
    multiple = text_multiple(model)
    if multiple and "target" in roles:  # Z-Image: the target's own learned padding and text-to-image distance
        length += (texts[roles.index("target")][0].shape[1] - length) % multiple
    left = pads_left(model)

    def row(tensor, shift):  # (shift, lo, hi) of a prompt padded to `length`
        pad = length - tensor.shape[1] if left else 0
        return pad + shift, pad, pad + tensor.shape[1]
    rows = {(role, True): row(*text) for role, text in zip(roles, texts)}
    if neg:
        rows.update({(role, False): row(*neg_text) for role in roles})
    text_keys = TextKeys(length, rows)
    entries = [(_pad(t, length, left), _pad_options(opts, t.shape[1], length, left))
               for (t, _), (_, opts) in zip(texts, entries)]

    tensors, pooled = [], []
    for (tensor, opts), name in zip(entries, names):
        tensors.append(repeat_rows(tensor, per_branch, name))
        if opts.get("pooled_output") is not None:
            pooled.append(repeat_rows(opts["pooled_output"], per_branch, name))
    options = {k: v for k, v in entries[0][1].items() if k not in CONTROL_OPTIONS}
    if pooled:
        if len(pooled) != len(entries):
            raise ValueError(f"{', '.join(names)}: some conditionings have a pooled output and some do not")
        options["pooled_output"] = torch.cat(pooled)
    positive = [[torch.cat(tensors), options]]
    if neg:
        neg_opts = dict(_pad_options(neg[1], neg_text[0].shape[1], length, left))
        if neg_opts.get("pooled_output") is not None:
            neg_opts["pooled_output"] = repeat_rows(neg_opts["pooled_output"], per_branch, "negative") \
                .repeat(len(entries), 1)
        negative = [[repeat_rows(_pad(neg_text[0], length, left), per_branch, "negative").repeat(len(entries), 1, 1),
                     neg_opts]]
    return Layout(positive, negative, text_keys, entries, [opts.get("control") for _, opts in entries],
                  [bool(opts.get("control_apply_to_uncond", False)) for _, opts in entries])
