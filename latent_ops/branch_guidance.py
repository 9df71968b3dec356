"""Per-branch distilled guidance (the FLUX-style 'guidance' model input set by FluxGuidance): one model call holds
every branch, so each conditional row gets its own branch's value through ComfyUI's APPLY_MODEL wrapper."""
import comfy.patcher_extension
import torch

from ..attention.controller import RUN_KEY

WRAPPER_KEY = "edit_pack_branch_guidance"


class BranchGuidance:
    """APPLY_MODEL wrapper: conditional rows of branch i get guidance values[i]; unconditional rows keep theirs."""

    def __init__(self, values):
        self.values = [float(v) for v in values]

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        guidance, run = kwargs.get("guidance"), transformer_options.get(RUN_KEY)
        if torch.is_tensor(guidance) and run is not None and guidance.shape[0] == x.shape[0]:
            roles, conds = run.row_roles(x.shape[0], transformer_options.get("cond_or_uncond") or [0])
            by_role = dict(zip(run.branches, self.values))
            rows = [by_role[role] if cond else None for role, cond in zip(roles, conds)]
            override = torch.tensor([v if v is not None else 0.0 for v in rows], dtype=guidance.dtype)
            keep = torch.tensor([v is None for v in rows])
            kwargs["guidance"] = torch.where(keep.to(guidance.device), guidance, override.to(guidance.device))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def __deepcopy__(self, memo):
        return self


def apply_branch_guidance(clone, values, names):
    """Install per-branch guidance on `clone` (a MODEL clone the caller owns) when the branches differ."""
    if values is None:
        return
    missing = [n for n, v in zip(names, values) if v is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: no guidance while another branch has one (FluxGuidance); give every "
                         f"branch's conditioning a FluxGuidance, or none")
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, BranchGuidance(values))
