"""Forward only some rows of the branch batch: an APPLY_MODEL wrapper that, while the run asks for one branch's
conditional rows, evaluates the model on those rows alone (zeros elsewhere), so a latent optimiser's passes cost
one branch instead of the whole CFG batch; and the call that makes such a pass, which may stop the forward early
(a controller raises StopForward once it has recorded what the caller needs)."""
import copy

import torch

from ..attention.attention_record import StopForward
from ..attention.controller import RUN_KEY

ROWS_KEY = "edit_pack_rows"  # run.store: the role whose cond rows the next model evaluation runs alone


def one_branch(run, role):
    """A view of `run` whose batches hold only `role` rows (same store, step and phase)."""
    view = copy.copy(run)
    view.branches = (role,)
    return view


def _pick(value, rows, batch):
    """`value` restricted to the batch rows `rows` (tensors with the batch as first dimension, also inside
    lists, tuples and dicts, e.g. a ControlNet's residuals); anything else as it is."""
    if torch.is_tensor(value):
        return value[rows] if value.ndim > 0 and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_pick(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: _pick(v, rows, batch) for k, v in value.items()}
    return value


def _selector(rows):
    """A slice for consecutive rows (no index tensor to build), else the list."""
    return slice(rows[0], rows[-1] + 1) if rows == list(range(rows[0], rows[-1] + 1)) else rows


class SelectRows:
    """APPLY_MODEL wrapper: idle unless run.store[ROWS_KEY] names a role; then only that role's cond rows reach
    the model, with their own conditioning, cond_or_uncond [0] and a run view that labels them with the role."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        options = transformer_options if transformer_options is not None else {}
        run = options.get(RUN_KEY)
        role = run.store.get(ROWS_KEY) if run is not None else None
        if role is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        batch = x.shape[0]
        roles, conds = run.row_roles(batch, options.get("cond_or_uncond") or [0])
        rows = [i for i, (r, c) in enumerate(zip(roles, conds)) if r == role and c]
        out = torch.zeros_like(x)
        if not rows:
            return out
        sel = _selector(rows)
        options = dict(options, cond_or_uncond=[0])
        options[RUN_KEY] = one_branch(run, role)
        out[sel] = executor(*_pick((x, t, c_concat, c_crossattn, control), sel, batch), options,
                            **_pick(kwargs, sel, batch))
        return out


def forward_rows(run, model_fn, x, sigma, role):
    """Evaluate the branch-stacked latent `x` with only `role`'s cond rows reaching the model (needs SelectRows
    on the MODEL). True if the forward ran to its end, False if a controller stopped it (StopForward)."""
    run.store[ROWS_KEY] = role
    try:
        model_fn(x, sigma)
        return True
    except StopForward:
        return False
    finally:
        run.store.pop(ROWS_KEY, None)
