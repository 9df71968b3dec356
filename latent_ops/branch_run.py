"""What every multi-branch sampler (Edit Sampler, FlowEdit) sets up before sampling: one MODEL clone carrying the
run state, per-branch CFG (chained with the MODEL's own sampler_cfg_function), the branches' conditionings laid
out as one batch (prompts padded to one length, the padding masked out of attention), and each branch's own model
inputs and ControlNet on its rows."""
from ..attention.controller import RUN_KEY
from ..attention.hooks import install_hooks, model_family
from .branch_cfg import BranchCFG
from .branch_control import branch_control
from .branch_inputs import apply_branch_inputs
from .conditioning import lay_out


def prepare_branches(model, run, conds, scales, negative):
    """(clone, positive, negative, guider cfg) for the branches run.branches with these conditionings and scales."""
    model_family(model)  # a family the pack refuses is refused here too, by name
    names = [f"{r} conditioning" for r in run.branches]
    cfg = BranchCFG(scales, run.per_branch, model.model_options.get("sampler_cfg_function"))
    if cfg.guider_cfg() != 1.0 and negative is None:
        raise ValueError("negative: a branch uses guidance other than 1, so a negative CONDITIONING is required")
    layout = lay_out(model, conds, names, run.branches, run.per_branch, negative)
    control = branch_control(layout, names, run.branches)
    if control is not None:
        layout.positive[0][1]["control"] = control
        layout.positive[0][1]["control_apply_to_uncond"] = any(layout.to_uncond)
    run.text_keys = layout.text_keys
    clone = model.clone()
    if layout.text_keys.padded:
        install_hooks(clone)  # the padded text keys are masked by the pack's attention hooks, technique or not
    apply_branch_inputs(clone, model, layout, names, run.per_branch, run.latent_hw, run.branches)
    clone.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    clone.model_options["sampler_cfg_function"] = cfg
    return clone, layout.positive, layout.negative, cfg.guider_cfg()
