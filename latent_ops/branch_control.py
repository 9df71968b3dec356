"""Per-branch ControlNet: each branch's ControlNet (a chain, as ComfyUI's Apply ControlNet nodes build it) runs on
that branch's rows only; the rows of a branch without one get no control (zeros: h + 0 = h).

Stands in the batched conditioning's 'control' option with the interface ComfyUI's sampler uses on a ControlNet
(get_control, pre_run, cleanup, get_models, get_extra_hooks, inference_memory_requirements). Each ControlNet sees
its branch's rows of the model call and the branch's prompt without the zeros that pad it to the batch's length.
"""
import torch

from ..attention.controller import RUN_KEY
from ..attention.indexing import selector


def _take(value, index, batch):
    """Rows `index` of a model-call input (tensor or list of tensors with the batch first); other values as they
    are."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value[index]
    if isinstance(value, list) and value and all(torch.is_tensor(v) and v.shape[0] == batch for v in value):
        return [v[index] for v in value]
    return value


def _place(total, index, part, batch):
    """Merge one branch's control outputs {name: [tensor or None]} into the call's (zeros on the other rows)."""
    for name, outs in part.items():
        slots = total.setdefault(name, [None] * len(outs))
        slots.extend([None] * (len(outs) - len(slots)))
        for j, t in enumerate(outs):
            if t is None:
                continue
            if slots[j] is None:
                slots[j] = t.new_zeros(batch, *t.shape[1:])
            slots[j][index] = t.to(slots[j])
    return total


class BranchControl:
    """controls: each branch's ControlNet or None, in branch order; branches: their roles; to_uncond: whether each
    also applies to the branch's unconditional rows (ComfyUI's legacy Apply ControlNet node)."""

    previous_controlnet = None
    extra_hooks = None

    def __init__(self, controls, branches, names, text_keys, to_uncond=None):
        for control, name in zip(controls, names):
            if control is not None and control.get_extra_hooks():
                raise ValueError(f"{name}: its ControlNet carries hooks (e.g. a LoRA on the ControlNet); they would "
                                 f"apply to every branch's rows: apply the ControlNet without hooks, or to every "
                                 f"branch alike")
        self.controls, self.branches, self.text_keys = list(controls), tuple(branches), text_keys
        self.to_uncond = list(to_uncond or [False] * len(self.controls))

    def __deepcopy__(self, memo):
        return self

    def _active(self):
        return [c for c in dict.fromkeys(self.controls) if c is not None]

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        run = transformer_options.get(RUN_KEY)
        batch = x_noisy.shape[0]
        roles, conds = run.row_roles(batch, transformer_options.get("cond_or_uncond") or [0])
        total = {}
        for branch, control, to_uncond in zip(self.branches, self.controls, self.to_uncond):
            rows = [r for r, (role, c) in enumerate(zip(roles, conds)) if (c or to_uncond) and role == branch]
            if control is None or not rows:
                continue
            index = selector(rows, x_noisy.device, run.store)
            own = {k: _take(v, index, batch) for k, v in cond.items()}
            context = own.get("c_crossattn")
            spans = {self.text_keys.span(branch, conds[r]) for r in rows} if torch.is_tensor(context) else ()
            if len(spans) == 1:  # the prompt without the zeros that pad it
                lo, hi = spans.pop()
                own["c_crossattn"] = context[:, lo:hi]
            part = control.get_control(x_noisy[index], t[index], own, batched_number, transformer_options)
            if part is not None:
                _place(total, index, part, batch)
        return total or None

    def pre_run(self, model, percent_to_timestep_function):
        for c in self._active():
            c.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        for c in self._active():
            c.cleanup()

    def get_models(self):
        return [m for c in self._active() for m in c.get_models()]

    def get_extra_hooks(self):
        return []

    def inference_memory_requirements(self, dtype):
        return sum(c.inference_memory_requirements(dtype) for c in self._active())


def branch_control(layout, names, branches):
    """The batched conditioning's control: None when no branch has one; a BranchControl when the branches' differ
    or a padded prompt would reach a ControlNet; else the one ControlNet every branch shares."""
    controls = layout.controls
    if all(c is None for c in controls):
        return None
    if all(c is controls[0] for c in controls) and not layout.text_keys.padded:
        return controls[0]
    return BranchControl(controls, branches, names, layout.text_keys, layout.to_uncond)
