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


class EditRun:
    """One edit from an inversion, set up for a denoising loop: the branches' start latents, the RunState, the
    MODEL clone with per-branch CFG and guidance (prepare_branches), the K/V feed and the latent hooks, and what
    each step does around the solver. The Edit Sampler's own loop and the Edit Guider (any ComfyUI sampler) share it.

    source_mode "replay" pins the source branch to the stored trajectory at every step (exact source K/V and
    an exact source output); "reconstruct" lets it evolve from the inverted noise with its own prompt.
    drift_correction (Direct Inversion, Ju et al. 2023): after each step the other branches also get this share
    of the source branch's own error (stored next latent minus the step's result), so they inherit no inversion
    drift; needs the replayed source branch.
    """

    def __init__(self, model, inversion, branches, negative=None, source_mode="replay", start_step=0,
                 drift_correction=0.0):
        inversion.check_model(model)
        if not 0 <= start_step < inversion.steps:
            raise ValueError(f"start_step must be in [0, {inversion.steps - 1}] for this {inversion.steps}-step "
                             f"inversion")
        if source_mode not in ("replay", "reconstruct"):
            raise ValueError("source_mode must be 'replay' or 'reconstruct'")
        roles = [b.role for b in branches]
        if drift_correction and (source_mode != "replay" or "source" not in roles):
            raise ValueError("drift_correction: it corrects by the replayed source branch's error; use source_mode "
                             "replay (or set drift_correction to 0)")
        self.inversion, self.model, self.roles, self.start_step = inversion, model, roles, start_step
        self.per_branch, self.drift_correction = inversion.shape[0], drift_correction
        trajectory = inversion.trajectory
        default_target = inversion.target_start if inversion.target_start is not None and start_step == 0 else None
        starts = [b.start if b.start is not None else default_target if b.role == "target" and
                  default_target is not None else trajectory[start_step] for b in branches]
        starts = [s.to(trajectory[0]) for s in starts]
        for b, s in zip(branches, starts):
            if tuple(s.shape) != inversion.shape:
                raise ValueError(f"{b.role} start latent has shape {tuple(s.shape)}, the inversion {inversion.shape}")
        self.start = torch.cat(starts)  # model space, on the intermediate device
        self.run = RunState(branches=roles, per_branch=self.per_branch, phase="edit", total_steps=inversion.steps,
                            latent_hw=tuple(inversion.shape[-2:]))
        # a sampler_cfg_function already on the MODEL (RescaleCFG, ...) is chained per branch, not replaced
        self.clone, self.positive, self.negative, self.cfg = prepare_branches(
            model, self.run, [b.positive for b in branches], [b.cfg for b in branches], negative)
        self.hooks = latent_hooks_of(model)
        replay = source_mode == "replay" and "source" in roles
        self.src_rows = self.rows("source") if replay else None
        self.reset()

    def rows(self, role):
        i = self.roles.index(role)
        return slice(i * self.per_branch, (i + 1) * self.per_branch)

    def reset(self):
        """A fresh run state for a (new) sampling run."""
        self.run.store.clear()
        self.run.store.update(self.inversion.store)
        self.run.store["source_trajectory"] = self.inversion.trajectory
        self.run.phase, self.run.step = "edit", None
        self.kv_feed = KVFeed(self.model, self.inversion, self.run, self.start_step)

    def begin_step(self, i, x, model_fn):
        """Step i starts from the branch-stacked latent x: the K/V feed, then the latent hooks' adjust_latent."""
        self.run.step = i
        self.kv_feed.step(i, x.device)
        for h in self.hooks:
            x = h.adjust_latent(self.run, x, float(self.inversion.sigmas[i]), model_fn)
        return x

    def adjust_denoised(self, x, den, sigma, sigma_next):
        for h in self.hooks:
            den = h.adjust_denoised(self.run, x, den, sigma, sigma_next)
        return den

    def end_step(self, i, x):
        """x has reached the sigma after step i: drift correction, the latent hooks' after_step, the source replay."""
        following = self.inversion.trajectory[i + 1].to(x)
        if self.drift_correction:
            error = following - x[self.src_rows]
            x = x + self.drift_correction * error.repeat(len(self.roles), *([1] * (x.ndim - 1)))
        for h in self.hooks:
            x = h.after_step(self.run, x, i)
        if self.src_rows is not None:
            x[self.src_rows] = following
        return x

    def finish(self, out):
        """{role: final latent (user space) on ComfyUI's intermediate device}; the model-device K/V copy is freed."""
        self.run.store.pop(KV_KEY, None)  # the copy on the model's device; the inversion keeps its own
        self.run.phase = "done"
        out = out.to(comfy.model_management.intermediate_device())
        return {role: out[self.rows(role)] for role in self.roles}


def edit(model, inversion, branches, negative=None, source_mode="replay", start_step=0, seed=0, drift_correction=0.0):
    """Denoise all branches from the inversion with its own solver; returns {role: final latent (user space)} and
    the RunState. See EditRun for source_mode and drift_correction."""
    er = EditRun(model, inversion, branches, negative, source_mode, start_step, drift_correction)
    sigmas = inversion.sigmas
    stepper = Stepper(inversion.solver, inversion.flow)
    progress = StepProgress(inversion.steps - start_step, er.clone)
    preview = er.rows("target") if "target" in er.roles else slice(0, er.per_branch)
    seen = {}

    def denoised_hook(x, den, sigma, sigma_next):
        den = er.adjust_denoised(x, den, sigma, sigma_next)
        seen["x0"] = den[preview]
        return den

    def loop(model_fn, latent_in, sig):
        x = er.start.to(latent_in.device)
        for i in range(start_step, inversion.steps):
            x = er.begin_step(i, x, model_fn)
            x = stepper.step(model_fn, x, float(sig[i]), float(sig[i + 1]), denoised_hook)
            x = er.end_step(i, x)
            progress.tick(seen.pop("x0", None))
        return x

    out = run_guided(er.clone, er.positive, er.negative, er.cfg, er.clone.model.process_latent_out(er.start), sigmas,
                     loop, seed)
    return er.finish(out), er.run


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
