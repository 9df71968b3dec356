"""Per-branch classifier-free guidance, chained with a sampler_cfg_function already on the MODEL."""
import math

import torch


def _rows(args, rows, batch, scale):
    """The sampler_cfg_function args of some batch rows, with `scale` as their cond_scale.

    Tensors with the batch as first dimension (cond, uncond, input, sigma, the denoised pair) are sliced; the rest
    (model, model_options, the input conditioning lists) is passed as it is."""
    out = dict(args, cond_scale=scale)
    for key, value in args.items():
        if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
            out[key] = value[rows]
    return out


class BranchCFG:
    """sampler_cfg_function applying each branch's own guidance scale to its rows.

    `inner` is the sampler_cfg_function the MODEL already had (e.g. from ComfyUI's RescaleCFG node), or None. With
    one, each branch's rows go through it with that branch's scale as cond_scale, so it keeps working per branch;
    without, each row gets uncond + scale * (cond - uncond)."""

    def __init__(self, scales, per_branch, inner=None):
        self.scales = [float(s) for s in scales]
        self.per_branch = per_branch
        self.inner = inner

    def branch_of_rows(self, rows, device):
        """Branch index of every batch row: rows are [branch0 x per_branch, branch1 x per_branch, ...], repeated."""
        return (torch.arange(rows, device=device) // self.per_branch) % len(self.scales)

    def __call__(self, args):
        cond, uncond = args["cond"], args["uncond"]
        branch = self.branch_of_rows(cond.shape[0], cond.device)
        if self.inner is None:
            scale = torch.tensor(self.scales, dtype=cond.dtype, device=cond.device)[branch]
            return uncond + scale.view(-1, *([1] * (cond.ndim - 1))) * (cond - uncond)
        out = torch.empty_like(cond)
        for i, scale in enumerate(self.scales):
            rows = branch == i
            out[rows] = self.inner(_rows(args, rows, cond.shape[0], scale))
        return out

    def guider_cfg(self):
        """The guider's scale: 1 when no branch uses CFG (uncond is then never computed), else a non-1 value."""
        return next((s for s in self.scales if not math.isclose(s, 1.0)), 1.0)
