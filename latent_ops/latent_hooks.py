"""Latent hooks: per-step operations on the branch latents that a MODEL carries into the edit sampler
(blends of predicted clean latents, latent optimisation). Composed in order, like attention controllers."""

from ..attention.controller import LATENT_HOOKS_KEY
from ..attention.hooks import model_family
from ..attention.run_check import add_run_check


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


def with_latent_hook(model, hook):
    """A clone of `model` that also carries `hook`; the input MODEL is left untouched."""
    model_family(model)  # a family the pack refuses is refused here too, by name
    clone = model.clone()
    clone.model_options[LATENT_HOOKS_KEY] = latent_hooks_of(model) + (hook,)
    add_run_check(clone)
    return clone
