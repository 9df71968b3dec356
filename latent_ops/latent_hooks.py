"""Latent hooks: per-step operations on the branch latents that a MODEL carries into the edit sampler
(blends of predicted clean latents, latent optimisation). Composed in order, like attention controllers."""

from ..attention.controller import LATENT_HOOKS_KEY
from ..attention.hooks import model_family
from ..attention.run_check import add_run_check, technique_name


class LatentHook:
    """Base latent hook: changes nothing. Latent hooks act only inside the pack's samplers."""
    technique = None  # the name the warning gives it outside them (default: the class name without "Hook")

    def adjust_latent(self, run, x, sigma, model_fn):
        """Before the model is evaluated at a step: may return a new branch-stacked latent."""
        return x

    def adjust_denoised(self, run, x, denoised, sigma, sigma_next):
        """After the evaluation that drives the step: may return a new denoised estimate."""
        return denoised

    def after_step(self, run, x, step):
        """After step `step` moved the branch-stacked latent to the next sigma (before the source branch is put
        back on its stored trajectory): may return a new latent."""
        return x

    def __deepcopy__(self, memo):
        return self


def latent_hooks_of(model):
    return tuple(model.model_options.get(LATENT_HOOKS_KEY, ()))


def after_step_hooks(model, sampler):
    """The MODEL's latent hooks for a sampler that calls only after_step (FlowEdit). A hook that acts before the
    model call or on its denoised estimate would do nothing there, so it is refused by name."""
    hooks = latent_hooks_of(model)
    unused = [technique_name(h) for h in hooks if type(h).adjust_latent is not LatentHook.adjust_latent
              or type(h).adjust_denoised is not LatentHook.adjust_denoised]
    if unused:
        names = ", ".join(unused)
        raise ValueError(f"model: {names} works on the latent before each model call or on the denoised "
                         f"estimate, which {sampler} does not have, so it would do nothing there. Sample this MODEL "
                         f"with the Edit Sampler (or SamplerCustomAdvanced with the Edit Guider), or leave {names} "
                         f"out of {sampler}'s MODEL.")
    return hooks


def with_latent_hook(model, hook):
    """A clone of `model` that also carries `hook`; the input MODEL is left untouched."""
    model_family(model)  # a family the pack refuses is refused here too, by name
    clone = model.clone()
    clone.model_options[LATENT_HOOKS_KEY] = latent_hooks_of(model) + (hook,)
    add_run_check(clone)
    return clone
