"""FlowEdit (Kulikov et al., arXiv 2412.08629): inversion-free editing by an ODE on the difference between the
target and source velocities, run with the source, target (and optional aux) branches in one batch so that the
pack's attention patches act on it as in the Edit Sampler.

Z starts at the source X_src. For the steps from n_max down to n_min + 1 (of T): draw N, Z_src = noise(X_src, N, s),
Z_tar = Z + Z_src - X_src, V = d(Z_tar, c_tar) - d(Z_src, c_src) averaged over n_avg draws, Z <- Z + (s' - s) V.
Below n_min, plain sampling of the target continues from Z's noised state. d = (x - D)/s is the pack's ODE
direction (the velocity on flow models, eps on eps/v models: ComfyUI samples both as x = x0 + s * noise-like
ODEs, so the same coupling holds; noise(.) is the model's own noise_scaling).
"""
import comfy.model_management
import torch

from ..attention.run_state import RunState
from .branch_run import prepare_branches
from .guided_loop import StepProgress, run_guided
from .inversion import schedule
from .latent_hooks import after_step_hooks
from .preserve import REFERENCE_KEY
from .solvers import direction


def check_window(steps, n_max, n_min, n_avg):
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if not 0 < n_max <= steps:
        raise ValueError(f"n_max must lie in 1..steps ({steps}); it is {n_max}")
    if not 0 <= n_min < n_max:
        raise ValueError(f"n_min ({n_min}) must be at least 0 and below n_max ({n_max})")
    if n_avg < 1:
        raise ValueError("n_avg must be at least 1")


def flow_edit(model, latent, source_positive, target_positive, negative=None, steps=28, scheduler="simple", n_max=24,
              n_min=0, n_avg=1, source_cfg=1.5, target_cfg=5.5, seed=0, aux_positive=None, aux_cfg=1.0):
    """latent: the source LATENT samples (user space). Returns ({role: final latent, user space}, RunState)."""
    check_window(steps, n_max, n_min, n_avg)
    hooks = after_step_hooks(model, "FlowEdit")  # before any work: a hook FlowEdit cannot run is refused
    roles = ["source", "target"] + (["aux"] if aux_positive is not None else [])
    conds = [source_positive, target_positive] + ([aux_positive] if aux_positive is not None else [])
    n = latent.shape[0]
    sigmas = schedule(model, steps, scheduler)
    sampling = model.get_model_object("model_sampling")
    # the patches count FlowEdit's own steps: step 0 is the schedule's step T - n_max (KV-Mix's "first 5 steps",
    # Keep Outside Mask's step range mean the first steps of the edit, as in the Edit Sampler)
    run = RunState(branches=roles, per_branch=n, phase="edit", total_steps=n_max, latent_hw=tuple(latent.shape[-2:]))
    clone, positive, negative, guider_cfg = prepare_branches(model, run, conds,
                                                             [source_cfg, target_cfg, aux_cfg][:len(roles)], negative)
    generator = torch.Generator().manual_seed(int(seed))
    first, last_ode = steps - n_max, steps - n_min
    progress = StepProgress(steps - first, clone)

    def noise_like(x):
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)

    def noised(x0, noise, s):
        return sampling.noise_scaling(torch.full((x0.shape[0],), s, dtype=x0.dtype, device=x0.device), noise, x0)

    def evaluate(model_fn, rows, s):
        batch = torch.cat(rows)
        return direction(batch, model_fn(batch, s), s)

    def loop(model_fn, x, sig):
        x_src = x[:n]
        tail_noise = noise_like(x_src)  # the plain-sampling phase below n_min keeps one noise draw
        reference = [x_src if k < last_ode else noised(x_src, tail_noise, float(sig[k])) for k in range(steps + 1)]
        run.store[REFERENCE_KEY] = reference[first:]
        z = x_src.clone()
        for i in range(first, steps):
            run.step = i - first
            s, s_next = float(sig[i]), float(sig[i + 1])
            if i < last_ode:
                v = torch.zeros_like(z)
                for _ in range(n_avg):
                    z_src = noised(x_src, noise_like(x_src), s)
                    z_tar = z + z_src - x_src
                    d = evaluate(model_fn, [z_src] + [z_tar] * (len(roles) - 1), s)
                    v += d[n:2 * n] - d[:n]
                z = z + (s_next - s) * (v / n_avg)
                if i + 1 == last_ode:  # into x space at the next sigma: Z's noised state (Z itself at sigma 0)
                    z = z + reference[last_ode] - x_src
            else:
                d = evaluate(model_fn, [reference[i]] + [z] * (len(roles) - 1), s)
                z = z + (s_next - s) * d[n:2 * n]
            state = torch.cat([reference[i + 1]] + [z] * (len(roles) - 1))
            for h in hooks:
                state = h.after_step(run, state, i - first)
            z = state[n:2 * n]
            progress.tick(z)  # Z is the edited clean latent while the ODE runs
        return torch.cat([x_src] + [z] * (len(roles) - 1))

    out = run_guided(clone, positive, negative, guider_cfg, torch.cat([latent] * len(roles)), sigmas, loop, seed)
    out = out.to(comfy.model_management.intermediate_device())
    run.phase = "done"
    return {role: out[i * n:(i + 1) * n] for i, role in enumerate(roles)}, run
