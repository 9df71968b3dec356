"""Inversion: source latent -> inverted noise, keeping the whole source trajectory (and optional captures)."""
from dataclasses import dataclass, field

import comfy.model_management
import comfy.samplers
import torch

from ..attention.controller import RUN_KEY
from ..attention.hooks import model_family
from ..attention.indexing import INDEX_KEY
from ..attention.token_masks import TOKENS_KEY
from ..attention.run_state import EVAL_KEY, MISSING_KEY, PARTNER_KEY, SPLIT_KEY, RunState
from .guided_loop import StepProgress, is_flow, run_guided
from .solvers import Stepper

# the run's own bookkeeping, not results: per-device caches (keyed by the model's device) and split-call state
RUN_CACHES = (INDEX_KEY, TOKENS_KEY, EVAL_KEY, PARTNER_KEY, MISSING_KEY, SPLIT_KEY)


@dataclass
class Inversion:
    """What editing needs from an inversion. Latents here are in the model's internal (process_latent_in) space.

    trajectory[i] is the source latent at sigmas[i]; trajectory[0] is the inverted noise, trajectory[-1] the source.
    store holds what capture controllers recorded (attention maps, K/V), keyed by their names.
    Every tensor lives on ComfyUI's intermediate device (CPU memory unless --gpu-only), so ComfyUI's output cache
    holds no GPU memory; the edit moves what it needs to the model's device when it uses it.
    kv_cache_device: "cpu" streams the K/V cache to the model's device one step at a time during the edit,
    "model" copies it there whole when the edit starts; either copy is freed when the edit ends.
    """
    trajectory: list
    sigmas: torch.Tensor
    solver: str
    flow: bool
    model_id: int
    model_name: str
    positive: list
    cfg: float
    store: dict = field(default_factory=dict)
    target_start: torch.Tensor = None  # a different starting latent for the target branch (e.g. Latents-Shift)
    kv_cache_device: str = "cpu"

    @property
    def steps(self):
        return len(self.sigmas) - 1

    @property
    def shape(self):
        return tuple(self.trajectory[0].shape)

    def check_model(self, model, latent_shape=None):
        """Clear errors when the inversion is used with another model or latent size."""
        if id(model.model) != self.model_id:
            raise ValueError(f"inversion: it was made with another model ({self.model_name}); invert the source "
                             f"again with the MODEL you edit with")
        if latent_shape is not None and tuple(latent_shape) != self.shape:
            raise ValueError(f"inversion: it holds latents of shape {self.shape}, the edit uses {tuple(latent_shape)}; "
                             f"invert the image at the size you edit")


def schedule(model, steps, scheduler):
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler must be one of {comfy.samplers.SCHEDULER_NAMES}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def default_solver(model):
    return "euler" if is_flow(model) else "ddim"


def invert(model, latent, positive, negative=None, cfg=1.0, steps=15, scheduler="simple", solver="auto",
           capture_steps=(), seed=0, exact_iterations=0):
    """Invert `latent` (LATENT samples, user space) with `model`; returns an Inversion.

    exact_iterations: fixed-point passes per step (0: the explicit inversion step; see Stepper.invert_step).
    capture_steps: sampling-step indices at which the MODEL's capture controllers record, in a replay pass over
    the stored trajectory (exactly what the replayed source branch sees when editing).
    """
    model_family(model)  # a family the pack refuses is refused here too, by name
    flow = is_flow(model)
    solver = default_solver(model) if solver == "auto" else solver
    stepper = Stepper(solver, flow)
    sigmas = schedule(model, steps, scheduler)
    clone = model.clone()
    run = RunState(branches=("source",), per_branch=latent.shape[0], phase="invert", total_steps=steps,
                   latent_hw=tuple(latent.shape[-2:]))
    clone.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    trajectory = []
    if exact_iterations < 0:
        raise ValueError("exact_iterations must be 0 or more")
    progress = StepProgress(steps + len(capture_steps))

    def loop(model_fn, x, sig):
        trajectory.append(x.clone())
        for i in range(steps, 0, -1):  # sigma 0 -> sigma_max
            run.step = i - 1
            x = stepper.invert_step(model_fn, x, float(sig[i]), float(sig[i - 1]), exact_iterations)
            trajectory.append(x.clone())
            progress.tick()
        trajectory.reverse()
        run.phase = "capture"
        for i in sorted(capture_steps):
            run.step = i
            model_fn(trajectory[i], float(sig[i]))
            progress.tick()
        return x

    run_guided(clone, positive, negative, cfg, latent, sigmas, loop, seed)
    run.phase = "done"
    keep = comfy.model_management.intermediate_device()
    return Inversion(trajectory=to_device(trajectory, keep), sigmas=sigmas, solver=solver, flow=flow,
                     model_id=id(model.model), model_name=type(model.model).__name__, positive=positive, cfg=cfg,
                     store=to_device({k: v for k, v in run.store.items() if k not in RUN_CACHES}, keep))


def to_device(value, device):
    """`value` with every tensor inside (nested dicts, lists, tuples) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
