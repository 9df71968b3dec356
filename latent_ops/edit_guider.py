"""The Edit Guider: a ComfyUI GUIDER that runs an edit's branches (EditRun) under any SAMPLER of
SamplerCustomAdvanced, in one batch with the pack's run state.

The sampler steps every row; at each model evaluation the guider writes into the latent the sampler hands it
(its state for the usual samplers), so that:
- the first evaluation starts from the edit's start latents (the inverted noise; Latents-Shift's for the target),
  whatever NOISE and latent the sampler node was given;
- a latent reaching the schedule's sigma i + 1 gets step i's end (drift correction, latent hooks such as Keep
  Outside Mask, the replayed source put on its stored latent) and step i + 1's start (K/V feed, adjust_latent):
  with euler this is exactly the Edit Sampler's loop; samplers that evaluate several latents at a schedule sigma
  (heun) get it on each;
- at a sigma between the schedule's (2nd-order samplers' midpoints) the replayed source rows take the stored
  trajectory interpolated linearly in sigma (the Euler/DDIM path between the stored latents).
The sigmas must be the inversion's schedule from the start step (the Edit Guider's SIGMAS output); a noise mask on
the latent is refused (use Keep Outside Mask). Only the target rows come out (and reach the preview and the
denoised output).
"""
import comfy.samplers
import torch

from .solvers import sigma_tensor


class EditGuider(comfy.samplers.CFGGuider):
    def __init__(self, edit_run):
        super().__init__(edit_run.clone)
        self.edit = edit_run
        self.set_conds(edit_run.positive, edit_run.negative if edit_run.negative is not None else edit_run.positive)
        self.set_cfg(edit_run.cfg)

    def schedule(self):
        """The sigmas this guider samples: the inversion's, from the start step."""
        return self.edit.inversion.sigmas[self.edit.start_step:].clone()

    def check(self, latent_image, sigmas, denoise_mask):
        if denoise_mask is not None:
            raise ValueError("latent_image: the Edit Guider does not take a noise mask (SetLatentNoiseMask); keep the "
                             "source outside a mask with Keep Outside Mask on the MODEL instead")
        expected = self.schedule()
        if sigmas.shape != expected.shape or not torch.allclose(sigmas.float().cpu(), expected, rtol=1e-4, atol=1e-6):
            raise ValueError(f"sigmas: the Edit Guider follows the inversion's schedule from start_step "
                             f"({len(expected) - 1} steps); connect the Edit Guider's sigmas output to the sampler")
        shape = self.edit.inversion.shape
        if tuple(latent_image.shape[-2:]) != shape[-2:]:
            raise ValueError(f"latent_image: it is {tuple(latent_image.shape[-2:])} in latent size, the inversion "
                             f"{shape[-2:]}; the guider starts from the inversion (connect the source latent)")

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        self.check(latent_image, sigmas, denoise_mask)
        self.edit.reset()
        self.steps = _Steps(self.edit)
        target = self.edit.rows("target") if "target" in self.edit.roles else slice(0, self.edit.per_branch)

        def target_callback(step, x0, x, total):
            return callback(step, x0[target], x[target], total)
        zeros = torch.zeros_like(self.edit.start)
        try:
            out = super().sample(zeros, zeros, _StartAndFinish(sampler, self.steps), sigmas, None,
                                 target_callback if callback is not None else None, disable_pbar, seed)
            return self.edit.finish(out)["target" if "target" in self.edit.roles else self.edit.roles[0]]
        finally:
            self.edit.run.release()

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        def model_fn(y, s):
            return super(EditGuider, self).outer_predict_noise(y, sigma_tensor(y, s), model_options, seed)
        sigma = float(timestep.flatten()[0])
        self.steps.before(x, sigma, model_fn)
        den = super().outer_predict_noise(x, timestep, model_options, seed)
        return self.edit.adjust_denoised(x, den, sigma, self.steps.next_sigma(sigma))


class _Steps:
    """Which step an evaluation belongs to, and the once-per-latent work at the schedule's sigmas."""

    def __init__(self, edit):
        self.edit, self.sigmas = edit, [float(s) for s in edit.inversion.sigmas]
        self.done = set()  # (schedule index, data_ptr) of latents already brought to that sigma
        self.started = False

    def locate(self, sigma):
        """(i, exact): sigmas[i] >= sigma > sigmas[i + 1], exact when sigma is sigmas[i]."""
        for i, s in enumerate(self.sigmas):
            if abs(s - sigma) <= 1e-5 * max(abs(s), 1e-3):
                return i, True
            if s < sigma:
                return max(i - 1, 0), False
        return len(self.sigmas) - 1, False

    def next_sigma(self, sigma):
        i, _ = self.locate(sigma)
        return self.sigmas[min(i + 1, len(self.sigmas) - 1)]

    def before(self, x, sigma, model_fn):
        """Writes into x (in place) what the edit's loop would have at this evaluation."""
        edit = self.edit
        i, exact = self.locate(sigma)
        last = len(self.sigmas) - 1
        if exact and (i, x.data_ptr()) not in self.done:
            self.done.add((i, x.data_ptr()))
            y = x
            if not self.started:
                y, self.started = edit.start.to(x), True
            elif i > edit.start_step:
                y = edit.end_step(i - 1, x.clone())
            if i < last:
                y = edit.begin_step(i, y, model_fn)
            x.copy_(y)
        edit.run.step = min(i, last - 1)
        if edit.src_rows is not None and not exact:
            traj, a, b = edit.inversion.trajectory, self.sigmas[i], self.sigmas[i + 1]
            w = (a - sigma) / (a - b)
            x[edit.src_rows] = (1 - w) * traj[i].to(x) + w * traj[i + 1].to(x)

    def finish(self, x):
        last = len(self.sigmas) - 1
        if (last, x.data_ptr()) in self.done:
            return x
        return self.edit.end_step(last - 1, x)


class _StartAndFinish(comfy.samplers.Sampler):
    """The user's sampler, handed a noise/latent pair its noise scaling turns into the start latents (eps/v:
    latent + 0; flow: s * x + (1 - s) * x), and ending with the edit's last step end."""

    def __init__(self, sampler, steps):
        self.sampler, self.steps = sampler, steps

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        start = self.steps.edit.start.to(noise)
        noise = start if self.steps.edit.inversion.flow else torch.zeros_like(start)
        out = self.sampler.sample(model_wrap, sigmas, extra_args, callback, noise, start, denoise_mask, disable_pbar)
        return self.steps.finish(out)
