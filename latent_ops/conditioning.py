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


def stack_conditioning(conds, names, per_branch):
    """One CONDITIONING whose batch is [branch0 x per_branch, branch1 x per_branch, ...].

    Token lengths must agree up to whole repeats (as ComfyUI does for CLIP's 77-token chunks); pooled outputs are
    stacked too; other options (guidance, sizes) come from the last branch, normally the target.
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
    options = dict(entries[-1][1])
    if pooled:
        if len(pooled) != len(entries):
            raise ValueError(f"{', '.join(names)}: some conditionings have a pooled output and some do not")
        options["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(tensors), options]]

