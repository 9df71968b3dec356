"""Mask-guided blending of predicted clean latents between edit branches (UAM's adaptive mask, or a fixed MASK).

Adaptive (UAM, three branches): at step i, diff = |x0_into - x0_source| per latent element; threshold = the
q_i-quantile of diff over each image's latent (all channels), q_i = q * i / (steps - 1) ramping linearly to q;
mask = diff > threshold_scale * threshold (threshold_scale 1 is the paper's text and the default; 2 is what the
authors' code computes: it subtracts the clamped difference before comparing with the threshold again), dilated by a
(2 * radius + 1)^2 max-pool per channel. Below the gate sigma (T_mask): x0_into = mask * x0_into + (1 - mask) * x0_fill.
Mask 1 keeps the branch's own content (where the branches differ: the edit), 0 takes the fill branch (the rest).

The step then continues as in the paper's DDIM update z_{t-1} = sqrt(a_{t-1}) x0_blend + sqrt(1 - a_{t-1}) eps:
the branch keeps its own noise prediction. The hook returns the denoised value that makes the pack's first-order
step (DDIM / Euler) land exactly there; with rf_solver / fireflow it acts on the midpoint evaluation (approximate).
"""
import math

import torch

from .latent_hooks import LatentHook
from .masks import as_mask, dilate, per_batch, resize  # noqa: F401  (dilate: also blend.dilate)

MASKS_KEY = "blend_masks"
MODES = ("adaptive", "fixed_mask")
ROLES = ("target", "source", "aux")


def ramp_quantile(q, step, total_steps):
    """q_i of step i: linear from 0 at the first step to q at the last (numpy.linspace(0, q, steps)[i])."""
    if total_steps <= 1:
        return float(q)
    return float(q) * step / (total_steps - 1)


def broadcast_to_latent(mask, x):
    """A [n, 1, h, w] mask shaped to broadcast over a latent [n, C, h, w] or [n, C, T, h, w] (Qwen-Image's
    video-format latent)."""
    return mask.reshape(mask.shape[0], 1, *([1] * (x.ndim - 4)), *mask.shape[-2:])


def adaptive_mask(x0_into, x0_source, q, threshold_scale=1.0, radius=1):
    """Float mask [B, C, H, W] (1 where x0_into differs from x0_source by more than threshold_scale times the
    q-quantile of the difference of that image), dilated."""
    diff = (x0_into.float() - x0_source.float()).abs()
    threshold = torch.quantile(diff.flatten(1), float(q), dim=1).view(-1, *([1] * (diff.ndim - 1)))
    return dilate((diff > threshold_scale * threshold).float(), radius)


def blend(x0_into, x0_fill, mask):
    """mask * x0_into + (1 - mask) * x0_fill (bit-exact x0_into where mask is 1, x0_fill where it is 0)."""
    mask = mask.to(x0_into.dtype)
    return mask * x0_into + (1 - mask) * x0_fill


def keep_noise_denoised(den, den_new, sigma, sigma_next, flow):
    """The denoised value D for which the step x + (b - a)(x - D)/a equals the re-noising of den_new with the
    branch's own noise estimate: den_new + b * eps (eps/v models) or (1 - b) den_new + b * n (flow models)."""
    a, b = float(sigma), float(sigma_next)
    if math.isclose(a, b):
        return den_new
    c = a * (1 - b) / (a - b) if flow else a / (a - b)
    return den + c * (den_new - den)


def gate_sigma(model_sampling, t_mask, flow):
    """The sigma below which a blend acts, for 'timestep T_mask of 1000': sigma fraction T/1000 on flow models,
    the sigma of that share of the schedule (model_sampling.percent_to_sigma) on eps/v models."""
    if t_mask >= 1000:
        return math.inf
    if t_mask <= 0:
        return 0.0
    if flow:
        return t_mask / 1000.0
    return float(model_sampling.percent_to_sigma(1.0 - t_mask / 1000.0))


def resize_mask(mask, hw, batch):
    """A ComfyUI MASK [H, W] or [B, H, W] (pixels) -> [batch, 1, h, w] on the latent grid."""
    return resize(per_batch(as_mask(mask), batch), hw)[:, None]


def branch_rows(run, role, why):
    if role not in run.branches:
        raise ValueError(f"{why}: the edit has no '{role}' branch (branches: {', '.join(run.branches)})"
                         + ("; connect aux_positive on the Edit Sampler to add one" if role == "aux" else ""))
    i = run.branches.index(role)
    return slice(i * run.per_branch, (i + 1) * run.per_branch)


class BlendHook(LatentHook):
    """Latent hook: blends the predicted clean latent of branch `into` with branch `fill` below `gate` sigma.

    mode "adaptive": the UAM mask from `into` vs the source branch, kept per step in run.store[key][step]
    ([per_branch, C, H, W] bool, on the CPU). mode "fixed_mask": `mask` (a ComfyUI MASK, 1 keeps `into`).
    keep_noise: the branch keeps its own noise prediction (paper); False: the step continues from the blended
    estimate as the new denoised value.
    """

    technique = "Blend"

    def __init__(self, mode="adaptive", into="target", fill="aux", quantile=0.5, threshold_scale=1.0, radius=1,
                 gate=math.inf, flow=False, mask=None, keep_noise=True, key=MASKS_KEY):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if into not in ROLES or fill not in ROLES or into == fill:
            raise ValueError(f"into / fill: two different branches of {ROLES}, got {into!r} and {fill!r}")
        if mode == "fixed_mask" and mask is None:
            raise ValueError("mask: mode fixed_mask needs a MASK (1 keeps the branch, 0 takes the fill branch)")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must lie in [0, 1]")
        self.mode, self.into, self.fill = mode, into, fill
        self.quantile, self.threshold_scale, self.radius = float(quantile), float(threshold_scale), int(radius)
        self.gate, self.flow, self.mask, self.keep_noise, self.key = gate, flow, mask, keep_noise, key

    def active(self, sigma):
        return float(sigma) < self.gate

    def step_mask(self, run, den):
        into = den[branch_rows(run, self.into, "Blend into")]
        if self.mode == "fixed_mask":
            return broadcast_to_latent(resize_mask(self.mask.to(den.device), den.shape[-2:], into.shape[0]), den)
        source = den[branch_rows(run, "source", "Blend (adaptive)")]
        q = ramp_quantile(self.quantile, run.step or 0, run.total_steps)
        mask = adaptive_mask(into, source, q, self.threshold_scale, self.radius)
        run.store.setdefault(self.key, {})[run.step] = mask.bool().cpu()
        return mask

    def adjust_denoised(self, run, x, denoised, sigma, sigma_next):
        if not self.active(sigma):
            return denoised
        into_rows, fill_rows = branch_rows(run, self.into, "Blend into"), branch_rows(run, self.fill, "Blend fill")
        mask = self.step_mask(run, denoised)
        new = blend(denoised[into_rows], denoised[fill_rows], mask)
        if self.keep_noise:
            new = keep_noise_denoised(denoised[into_rows], new, sigma, sigma_next, self.flow)
        out = denoised.clone()
        out[into_rows] = new
        return out

    def __repr__(self):
        return f"BlendHook({self.mode}, {self.into}<-{self.fill}, q={self.quantile}, gate={self.gate:.4g})"
