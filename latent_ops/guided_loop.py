"""Run a custom denoising loop inside ComfyUI's own CFGGuider, so model loading, conditioning, patches and
wrappers work exactly as in KSampler."""
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from .solvers import sigma_tensor


class LoopSampler(comfy.samplers.Sampler):
    """A ComfyUI sampler that hands `loop(model, latent, sigmas)` the guided model `model(x, sigma) -> denoised`."""

    def __init__(self, loop):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        def model(x, sigma):
            return model_wrap(x, sigma_tensor(x, sigma), **extra_args)
        return self.loop(model, latent_image, sigmas)


def run_guided(model, positive, negative, cfg, latent, sigmas, loop, seed=0):
    """Run `loop` under a CFGGuider on `model` (a clone the caller owns); returns the loop's latent, user space."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative if negative is not None else positive)
    guider.set_cfg(cfg)
    return guider.sample(torch.zeros_like(latent), latent, LoopSampler(loop), sigmas, disable_pbar=True, seed=seed)


def is_flow(model):
    """True for rectified-flow (CONST) models, False for eps/v models; a clear error for anything else."""
    sampling = model.get_model_object("model_sampling")
    if isinstance(sampling, comfy.model_sampling.CONST):
        return True
    if isinstance(sampling, (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION)):
        return False
    raise ValueError(f"model: inversion supports eps/v-prediction and rectified-flow models; this MODEL samples "
                     f"with {type(sampling).__mro__[1].__name__}")


class StepProgress:
    """ComfyUI progress bar plus interruption check, once per step; with a MODEL, the step's latent preview (as
    KSampler shows it, by ComfyUI's own previewer for the --preview-method in use)."""

    def __init__(self, total, model=None):
        self.bar = comfy.utils.ProgressBar(total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format) \
            if model is not None else None

    def tick(self, x0=None):
        """One step done; x0: its predicted clean latent (model space) to preview, if any."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if self.previewer is not None and x0 is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
        self.bar.update_absolute(self.bar.current + 1, self.bar.total, preview)
