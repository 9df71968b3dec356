"""Per-branch model inputs: what the model computes from each branch's own options (FLUX guidance, SDXL size
conditioning, Kontext reference latents, inpainting concat, ...) reaches that branch's conditional rows.

The batched conditioning carries the first branch's options. Each branch's model inputs are made by ComfyUI's own
encode_model_conds, as if the branch ran alone; those that differ from the batched ones on the branch's rows are
put on those rows by an APPLY_MODEL wrapper (unconditional rows keep the negative's). Inputs that cannot differ
within one model call (a constant, another token count) are refused with an error naming the branch.
"""
import comfy.conds
import comfy.patcher_extension
import torch

from ..attention.controller import RUN_KEY
from ..attention.indexing import selector
from .conditioning import model_conds, same

WRAPPER_KEY = "edit_pack_branch_inputs"
OWN_INPUTS = ("c_crossattn",)  # batched by the layout itself (padded per row)


def _values(cond, rows):
    """A model cond's tensors repeated to `rows` rows: a tensor, or a list of tensors (CONDList)."""
    return cond.process_cond(batch_size=rows, area=None).cond


def _shapes(value):
    return [tuple(v.shape) for v in value] if isinstance(value, list) else tuple(value.shape)


def branch_inputs(model, layout, names, per_branch, latent_hw):
    """{model input name: [value of each branch, per_branch rows]} for the inputs that differ from the batched
    conditioning's on some branch's rows; {} when none does."""
    channels = model.model.latent_format.latent_channels
    count = len(layout.entries)
    # the latent's size only sets defaults that are alike on every branch (SDXL's width): any size compares right
    noise = torch.zeros(per_branch * count, channels, *(latent_hw or (64, 64)))
    batched = model_conds(model, layout.positive[0][0], layout.positive[0][1], noise)
    own = [model_conds(model, t, opts, noise[:per_branch]) for t, opts in layout.entries]
    out = {}
    for key in sorted(set(batched).union(*own) - set(OWN_INPUTS)):
        missing = [n for n, conds in zip(names, own) if key not in conds]
        if missing or key not in batched:
            raise ValueError(f"{', '.join(missing or names[1:])}: the model input '{key}' comes from options that "
                             f"only some branches have (e.g. reference latents); one model call runs every branch, "
                             f"so give every branch such an option (of the same size), or none")
        if isinstance(batched[key], comfy.conds.CONDConstant):
            for name, conds in zip(names, own):
                if not same(conds[key].cond, batched[key].cond):
                    raise ValueError(f"{name}: its '{key}' ({conds[key].cond!r}) differs from the {names[0]}'s "
                                     f"({batched[key].cond!r}); one model call runs every branch: give every branch "
                                     f"the same")
            continue
        rows = _values(batched[key], per_branch * count)
        values = [_values(conds[key], per_branch) for conds in own]
        for i, (name, value) in enumerate(zip(names, values)):
            if _shapes(value) != _shapes(_rows(rows, slice(i * per_branch, (i + 1) * per_branch))):
                raise ValueError(f"{name}: its model input '{key}' has shape {_shapes(value)}, the {names[0]}'s "
                                 f"{_shapes(_rows(rows, slice(0, per_branch)))}; one model call runs every branch: "
                                 f"give every branch inputs of the same size (e.g. reference latents of one size)")
        if not all(same(v, _rows(rows, slice(i * per_branch, (i + 1) * per_branch))) for i, v in enumerate(values)):
            out[key] = values
    return out


def _rows(value, index):
    return [v[index] for v in value] if isinstance(value, list) else value[index]


def _put(current, index, value):
    """`current` (tensor or list of tensors) with rows `index` set to `value`, as new tensors."""
    if isinstance(current, (list, tuple)):
        return [_put(c, index, v) for c, v in zip(current, value)]
    out = current.clone()
    out[index] = value.to(current)
    return out


class BranchInputs:
    """APPLY_MODEL wrapper: the conditional rows of each branch get that branch's own model inputs.

    values: {input name: [value per branch]} (tensor or list of tensors, per_branch rows each, on the host)."""

    def __init__(self, values, branches, per_branch):
        self.values, self.branches, self.per_branch = values, tuple(branches), per_branch
        self.on_device = {}

    def __deepcopy__(self, memo):
        return self

    def _value(self, key, i, like):
        """Branch i's value of `key` on `like`'s device (copied there once per device)."""
        ref = like[0] if isinstance(like, (list, tuple)) else like
        cache_key = (key, i, ref.device)
        if cache_key not in self.on_device:
            value = self.values[key][i]
            self.on_device[cache_key] = [v.to(ref.device) for v in value] if isinstance(value, list) else \
                value.to(ref.device)
        return self.on_device[cache_key]

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        run = transformer_options.get(RUN_KEY)
        if run is not None:
            roles, conds = run.row_roles(x.shape[0], transformer_options.get("cond_or_uncond") or [0])
            inputs = dict(kwargs, c_concat=c_concat)
            for i, branch in enumerate(self.branches):
                rows = [r for r, (role, cond) in enumerate(zip(roles, conds)) if cond and role == branch]
                if len(rows) != self.per_branch:
                    continue
                index = selector(rows, x.device, run.store)
                for key in self.values:
                    if inputs.get(key) is not None:
                        inputs[key] = _put(inputs[key], index, self._value(key, i, inputs[key]))
            c_concat = inputs.pop("c_concat")
            kwargs = inputs
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def apply_branch_inputs(clone, model, layout, names, per_branch, latent_hw, branches):
    """Install BranchInputs on `clone` (a MODEL clone the caller owns) when some branch's model inputs differ."""
    values = branch_inputs(model, layout, names, per_branch, latent_hw)
    if values:
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                   BranchInputs(values, branches, per_branch))
