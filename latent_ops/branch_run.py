"""What every multi-branch sampler (Edit Sampler, FlowEdit) sets up before sampling: one MODEL clone carrying the
run state, per-branch CFG (chained with the MODEL's own sampler_cfg_function) and per-branch FLUX guidance, and
the branches' conditionings stacked into one batch."""
from ..attention.controller import RUN_KEY
from ..attention.hooks import model_family
from .branch_cfg import BranchCFG
from .branch_guidance import apply_branch_guidance
from .conditioning import branch_guidance, stack_conditioning


def prepare_branches(model, run, conds, scales, negative):
    """(clone, positive, negative, guider cfg) for the branches run.branches with these conditionings and scales."""
    model_family(model)  # a family the pack refuses is refused here too, by name
    names = [f"{r} conditioning" for r in run.branches]
    cfg = BranchCFG(scales, run.per_branch, model.model_options.get("sampler_cfg_function"))
    if cfg.guider_cfg() != 1.0 and negative is None:
        raise ValueError("negative: a branch uses guidance other than 1, so a negative CONDITIONING is required")
    positive = stack_conditioning(conds, names, run.per_branch)
    if negative is not None:
        negative = stack_conditioning([negative] * len(conds), ["negative"] * len(conds), run.per_branch)
    clone = model.clone()
    apply_branch_guidance(clone, branch_guidance(conds), names)
    clone.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    clone.model_options["sampler_cfg_function"] = cfg
    return clone, positive, negative, cfg.guider_cfg()
