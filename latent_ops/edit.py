"""The multi-branch edit sampler: source, target and optional auxiliary branches denoised in one batch."""
import logging
from dataclasses import dataclass

import comfy.model_management
import torch

from ..attention.controller import chain_of
from ..attention.hooks import self_attention_layers
from ..attention.kv_mix import cache_readers, check_cache
from ..attention.kv_store import KV_KEY, cache_bytes, staged
from ..attention.run_state import RunState
from .branch_run import prepare_branches
from .guided_loop import StepProgress, run_guided
from .latent_hooks import latent_hooks_of
from .solvers import Stepper


@dataclass
class Branch:
    role: str
    positive: list
    cfg: float
    start: torch.Tensor = None  # model-space latent at the first edit step; default: the inverted trajectory


def edit(model, inversion, branches, negative=None, source_mode="replay", start_step=0, seed=0, drift_correction=0.0):
    """Denoise all branches from the inversion; returns {role: final latent (user space)} and the RunState.

    source_mode "replay" pins the source branch to the stored trajectory at every step (exact source K/V and
    an exact source output); "reconstruct" lets it evolve from the inverted noise with its own prompt.
    drift_correction (Direct Inversion, Ju et al. 2023): after each step the other branches also get this share
    of the source branch's own error (stored next latent minus the step's result), so they inherit no inversion
    drift; needs the replayed source branch.
    """
    inversion.check_model(model)
    if not 0 <= start_step < inversion.steps:
        raise ValueError(f"start_step must be in [0, {inversion.steps - 1}] for this {inversion.steps}-step inversion")
    if source_mode not in ("replay", "reconstruct"):
        raise ValueError("source_mode must be 'replay' or 'reconstruct'")
    roles = [b.role for b in branches]
    if drift_correction and (source_mode != "replay" or "source" not in roles):
        raise ValueError("drift_correction: it corrects by the replayed source branch's error; use source_mode "
                         "replay (or set drift_correction to 0)")
    per_branch = inversion.shape[0]
    trajectory, sigmas = inversion.trajectory, inversion.sigmas
    default_target = inversion.target_start if inversion.target_start is not None and start_step == 0 else None
    starts = [b.start if b.start is not None else default_target if b.role == "target" and default_target is not None
              else trajectory[start_step] for b in branches]
    starts = [s.to(trajectory[0]) for s in starts]
    for b, s in zip(branches, starts):
        if tuple(s.shape) != inversion.shape:
            raise ValueError(f"{b.role} start latent has shape {tuple(s.shape)}, the inversion {inversion.shape}")

    run = RunState(branches=roles, per_branch=per_branch, phase="edit", total_steps=inversion.steps,
                   latent_hw=tuple(inversion.shape[-2:]))
    # a sampler_cfg_function already on the MODEL (RescaleCFG, ...) is chained per branch, not replaced
    clone, positive, negative, guider_cfg = prepare_branches(model, run, [b.positive for b in branches],
                                                             [b.cfg for b in branches], negative)
    run.store.update(inversion.store)
    run.store["source_trajectory"] = trajectory
    kv_feed = KVFeed(model, inversion, run, start_step)
    hooks = latent_hooks_of(model)
    replay = source_mode == "replay" and "source" in roles
    src_rows = slice(roles.index("source") * per_branch, (roles.index("source") + 1) * per_branch) if replay else None
    stepper = Stepper(inversion.solver, inversion.flow)
    progress = StepProgress(inversion.steps - start_step)

    def denoised_hook(x, den, sigma, sigma_next):
        for h in hooks:
            den = h.adjust_denoised(run, x, den, sigma, sigma_next)
        return den

    def loop(model_fn, latent_in, sig):
        x = torch.cat(starts).to(latent_in.device)
        for i in range(start_step, inversion.steps):
            run.step = i
            kv_feed.step(i, x.device)
            for h in hooks:
                x = h.adjust_latent(run, x, float(sig[i]), model_fn)
            x = stepper.step(model_fn, x, float(sig[i]), float(sig[i + 1]), denoised_hook if hooks else None)
            following = trajectory[i + 1].to(x)
            if drift_correction:
                x = x + drift_correction * (following - x[src_rows]).repeat(len(roles), *([1] * (x.ndim - 1)))
            for h in hooks:
                x = h.after_step(run, x, i)
            if replay:
                x[src_rows] = following
            progress.tick()
        run.store.pop(KV_KEY, None)  # the copy on the model's device; the inversion keeps its own
        return x

    latent = clone.model.process_latent_out(torch.cat(starts))
    out = run_guided(clone, positive, negative, guider_cfg, latent, sigmas, loop, seed)
    results = {role: out[i * per_branch:(i + 1) * per_branch] for i, role in enumerate(roles)}
    run.phase = "done"
    return results, run


class KVFeed:
    """Puts the inversion's K/V cache where the edit's KV-mix reads it (run.store[KV_KEY]) on the model's device:
    the entries of each step as it starts ("cpu": one step's cache at a time on the device), or all of it at the
    first step ("model", when the device has the memory; else per step, with a warning)."""

    def __init__(self, model, inversion, run, start_step):
        self.cache, self.run = inversion.store.get(KV_KEY), run
        self.mode = "whole" if inversion.kv_cache_device == "model" else "step"
        readers = cache_readers(chain_of(model))
        if readers:
            check_cache(readers, self.cache, inversion.steps, self_attention_layers(model), start_step)

    def step(self, i, device):
        if not self.cache or self.mode == "loaded":
            return
        if self.mode == "whole":
            need, free = cache_bytes(self.cache), comfy.model_management.get_free_memory(device)
            if need <= free:
                self.run.store[KV_KEY], self.mode = staged(self.cache, device), "loaded"
                return
            logging.warning("Edit Sampler: the K/V cache (%.2f GiB) does not fit in the %.2f GiB free on %s; "
                            "streaming it one step at a time", need / 2 ** 30, free / 2 ** 30, device)
            self.mode = "step"
        self.run.store[KV_KEY] = staged(self.cache, device, i)
