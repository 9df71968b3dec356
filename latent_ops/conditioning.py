"""Stack one CONDITIONING per branch into one batched CONDITIONING."""
import math

import torch


def _single(cond, name):
    if not cond:
        raise ValueError(f"{name}: empty CONDITIONING")
    if len(cond) != 1:
        raise ValueError(f"{name}: combined/area conditionings ({len(cond)} entries) cannot drive one edit branch; "
                         f"encode one prompt per branch")
    return cond[0]


def _repeat_rows(t, rows, name):
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.repeat(rows, *([1] * (t.ndim - 1)))
    raise ValueError(f"{name}: conditioning batch {t.shape[0]} does not match the latent batch {rows}")


def _same(a, b):
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b.to(a))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==: only identity counts
        return False


def branch_guidance(conds):
    """Each branch's FLUX-style distilled guidance (FluxGuidance), or None when the branches agree."""
    values = [_single(c, "conditioning")[1].get("guidance") for c in conds]
    return None if all(_same(v, values[0]) for v in values) else values


def stack_conditioning(conds, names, per_branch):
    """One CONDITIONING whose batch is [branch0 x per_branch, branch1 x per_branch, ...].

    Token lengths must agree up to whole repeats (as ComfyUI does for CLIP's 77-token chunks); pooled outputs are
    stacked; a distilled guidance that differs per branch is applied per row by the sampler (branch_guidance);
    any other option (ControlNet, reference latents, size conditioning, area/mask) must be the same on every
    branch, else a clear error: one model call cannot give it to some rows only.
    """
    entries = [_single(c, n) for c, n in zip(conds, names)]
    lengths = [e[0].shape[1] for e in entries]
    target_len = math.lcm(*lengths)
    if target_len > 4 * max(lengths):
        raise ValueError(f"{', '.join(names)}: prompt token lengths {lengths} cannot be batched; "
                         f"make the prompts similar in length")
    tensors, pooled = [], []
    for (tensor, opts), name in zip(entries, names):
        tensor = tensor.repeat(1, target_len // tensor.shape[1], 1)
        tensors.append(_repeat_rows(tensor, per_branch, name))
        if "pooled_output" in opts and opts["pooled_output"] is not None:
            pooled.append(_repeat_rows(opts["pooled_output"], per_branch, name))
    for key in {k for _, opts in entries for k in opts} - {"pooled_output", "guidance"}:
        first = entries[0][1].get(key)
        for (_, opts), name in zip(entries[1:], names[1:]):
            if not _same(opts.get(key), first):
                raise ValueError(f"{name}: its '{key}' option differs from the {names[0]}'s; every branch runs in "
                                 f"one model call, so per-branch '{key}' (ControlNet, reference latents, size or "
                                 f"area conditioning) cannot be applied: give every branch the same, or none")
    options = dict(entries[-1][1])
    if pooled:
        if len(pooled) != len(entries):
            raise ValueError(f"{', '.join(names)}: some conditionings have a pooled output and some do not")
        options["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(tensors), options]]

