"""UnifyEdit latent optimisation: self-attention preservation (SAP) + cross-attention alignment (CAA) losses,
three ways to combine their gradients, and the latent hook that optimises the target branch of the edit sampler.

Conventions (see docs/unifyedit.md):
  L_SAP = mean over layers of sum_ij W_ij (A_src - A_tgt)_ij^2, W = m m^T (m: mask on the layer's grid) or 1.
  R     = mean CA of an edit token inside the mask / mean outside;  L_CAA = mean over layers, tokens of 1/(1+R)
          (= 1 - R/(1+R): bounded in (0, 1], falls as R grows, saturates instead of running away).
  Both are summed over the target images of the batch (images are independent, so per-image gradients are exact).
  naive:      g = beta1 * dL_SAP + beta2 * dL_CAA
  normalized: g = beta1 * unit(dL_SAP) + beta2 * unit(dL_CAA)
  balanced:   g = w_sa(p) * unit(dL_SAP) + w_ca(p) * unit(dL_CAA)
              unit(x) = x / |x| * sqrt(n / 16384) per image (n latent elements; norm 1 on SD1.5 at 512 px, the
              same per-element size at every resolution)
              w_sa(p) = beta1 * (1 - exp(-k1 p)) / (1 - exp(-k1))   rises 0 -> beta1
              w_ca(p) = beta2 * exp(-k2 p)                          falls beta2 -> beta2 exp(-k2)
              p = step / (active_steps - 1): the fraction of the optimised part of the trajectory done.
  update:     z <- z - s * sigma * g, sigma = ComfyUI's sigma of the step (eps models: sqrt((1-abar)/abar),
              the noise std of the sampler's latent; flow models: the same role, the noise std of x_t).
"""
import math
from dataclasses import dataclass

import comfy.patcher_extension
import torch
import torch.nn.functional as F

from ..attention.attention_record import RECORD_KEY, new_record
from .latent_hooks import LatentHook
from .loss_scale import LossScaler
from .masks import to_tokens
from .row_forward import SelectRows, forward_rows

MODES = ("balanced", "normalized", "naive")
EPS = 1e-8
REFERENCE_ELEMENTS = 4 * 64 * 64  # one SD1.5 latent at 512x512 px: unit() has norm 1 there
LAYERS_KEY = "unifyedit_layers"  # run.store: the layers a recorded pass reads (learned by its first full pass)
SCALER_KEY = "unifyedit_loss_scale"  # run.store: the run's LossScaler
ROWS_WRAPPER_KEY = "edit_pack_unifyedit_rows"


def sap_loss(sa, mask=None):
    """sa: {layer: (A_src [n, L, L], A_tgt [n, L, L], grid)}. Mean over layers, sum over images."""
    if not sa:
        return None
    total = 0.0
    for a_src, a_tgt, grid in sa.values():
        diff2 = (a_src.detach().to(a_tgt.dtype) - a_tgt).float() ** 2
        if mask is not None:
            m = to_tokens(mask, grid).to(diff2)
            diff2 = diff2 * (m.unsqueeze(-1) * m.unsqueeze(-2))
        total = total + diff2.sum()
    return total / len(sa)


def alignment_ratio(maps, m):
    """maps [n, L, T], m [n or 1, L] in [0, 1] -> R [n, T] = mean inside / mean outside."""
    m = m.to(maps).unsqueeze(-1)
    inside = (maps * m).sum(1) / m.sum(1).clamp_min(EPS)
    outside = (maps * (1 - m)).sum(1) / (1 - m).sum(1).clamp_min(EPS)
    return inside / outside.clamp_min(EPS)


def caa_loss(ca, mask):
    """ca: {layer: (maps [n, L, T], grid)}; mask [n or 1, H, W]. Mean over layers and tokens of 1/(1+R),
    summed over images."""
    if not ca:
        return None
    total = 0.0
    for maps, grid in ca.values():
        r = alignment_ratio(maps.float(), to_tokens(mask, grid))
        total = total + (1.0 / (1.0 + r)).mean(-1).sum()
    return total / len(ca)


def mask_from_attention(ca, hw):
    """Edit mask [n, H, W] from the (detached) cross-attention of the edit tokens: layer- and token-averaged map
    at latent size, min-max normalised per image, 1 where above its mean."""
    acc = 0.0
    for maps, grid in ca.values():
        m = maps.detach().float().mean(-1).reshape(maps.shape[0], 1, *grid)
        acc = acc + F.interpolate(m, size=tuple(hw), mode="bilinear", align_corners=False)
    acc = (acc / len(ca)).squeeze(1)
    lo = acc.flatten(1).min(1).values.view(-1, 1, 1)
    hi = acc.flatten(1).max(1).values.view(-1, 1, 1)
    acc = (acc - lo) / (hi - lo).clamp_min(EPS)
    return (acc > acc.flatten(1).mean(1).view(-1, 1, 1)).float()


def schedule_weights(p, beta1, beta2, k1, k2):
    """The adaptive timestep scheduler: (w_sa, w_ca) at trajectory fraction p in [0, 1]."""
    w_sa = beta1 * (p if abs(k1) < 1e-6 else (1 - math.exp(-k1 * p)) / (1 - math.exp(-k1)))
    w_ca = beta2 * math.exp(-k2 * p)
    return w_sa, w_ca


def unit(g):
    """g normalised per image to the norm sqrt(n / REFERENCE_ELEMENTS), n = elements per image: the per-element
    size of a unit vector on an SD1.5 latent at 512 px, at any latent size, so a step_size moves every latent
    element by the same amount at every resolution (zero stays zero)."""
    flat = g.flatten(1)
    norms = flat.norm(dim=1).view(-1, *([1] * (g.ndim - 1)))
    return g * (math.sqrt(flat.shape[1] / REFERENCE_ELEMENTS) / norms.clamp_min(EPS))


def combine(g_sa, g_ca, mode, w_sa, w_ca):
    """The update direction of one iteration; a missing gradient (None) counts as zero."""
    if mode not in MODES:
        raise ValueError(f"gradient_mode must be one of {MODES}")
    ref = g_sa if g_sa is not None else g_ca
    out = torch.zeros_like(ref)
    for g, w in ((g_sa, w_sa), (g_ca, w_ca)):
        if g is not None and w != 0:
            out = out + w * (g if mode == "naive" else unit(g))
    return out


@dataclass(frozen=True)
class UnifyEditConfig:
    mode: str = "balanced"
    beta1: float = 1.0
    beta2: float = 1.0
    k1: float = 8.0
    k2: float = 8.0
    iterations: int = 5
    step_size: float = 2.5
    active_steps: int = 10
    sap_region: str = "full"  # "full": whole map; "mask": W = m m^T

    def progress(self, step):
        return min(step / max(self.active_steps - 1, 1), 1.0)

    def weights(self, step):
        """Weights of the two (normalised or raw) gradients at a step, per mode."""
        if self.mode == "balanced":
            return schedule_weights(self.progress(step), self.beta1, self.beta2, self.k1, self.k2)
        return self.beta1, self.beta2


def branch_rows(run, role):
    if role not in run.branches:
        return None
    i = run.branches.index(role)
    return slice(i * run.per_branch, (i + 1) * run.per_branch)


class UnifyEditHook(LatentHook):
    """Optimises the target rows of the branch-stacked latent before each of the first `active_steps` steps.

    Per step: one pass without gradients over the source's cond rows only records the source self-attention
    maps (the source latent does not change during the step); each iteration then forwards only the target's cond
    rows with gradients (no uncond rows, no source rows: latent_ops/row_forward.py) and stops the forward after
    the last layer the losses read. A float16 model's gradients go through a dynamic loss scaler.

    mask: optional [1 or n, H, W] edit region (any size); None: from the edit tokens' cross-attention each step.
    on_update: optional callback(dict) per iteration (tests, diagnostics); never stored on the run.
    """

    technique = "SA-Preserve Optimizer (UnifyEdit)"

    def __init__(self, config, mask=None, on_update=None):
        self.config, self.mask, self.on_update = config, mask, on_update

    def adjust_latent(self, run, x, sigma, model_fn):
        c = self.config
        step = run.step
        if run.phase != "edit" or c.iterations <= 0 or step is None or step >= c.active_steps:
            return x
        tgt, src = branch_rows(run, "target"), branch_rows(run, "source")
        if tgt is None or src is None:
            raise ValueError("SAPreserveOptimizer needs an edit with a source and a target branch (Edit Sampler)")
        w_sa, w_ca = c.weights(step)
        with torch.inference_mode(False), torch.enable_grad():
            base = x.clone()
            z = base[tgt].clone()
            try:
                source = self._source_maps(run, base, sigma, model_fn) if w_sa != 0 else {}
                for it in range(c.iterations):
                    z = self._iterate(run, base, z, tgt, sigma, model_fn, source, w_sa, w_ca, step, it)
            finally:
                run.store.pop(RECORD_KEY, None)
            out = base.clone()
            out[tgt] = z
        return out

    @staticmethod
    def _forward(run, x, sigma, model_fn, mode):
        """One recorded pass over `mode`'s cond rows; learns (once per run) the layers it records, so later
        passes stop after the last of them."""
        rec = new_record(mode, run.store.get(LAYERS_KEY))
        run.store[RECORD_KEY] = rec
        if forward_rows(run, model_fn, x, sigma, mode):
            run.store[LAYERS_KEY] = frozenset(rec["seen"])
        rec = run.store.pop(RECORD_KEY)
        if not rec["seen"]:
            raise ValueError("SAPreserveOptimizer: no attention layer matched the chosen resolutions/layers for "
                             "this model; choose another sa_layers / ca_layers resolution or layer names")
        return rec

    def _source_maps(self, run, base, sigma, model_fn):
        with torch.no_grad():
            return self._forward(run, base, sigma, model_fn, "source")["sa"]

    def _iterate(self, run, base, z, tgt, sigma, model_fn, source, w_sa, w_ca, step, it):
        c = self.config
        z = z.detach().requires_grad_(True)
        full = torch.cat([base[:tgt.start], z, base[tgt.stop:]])
        rec = self._forward(run, full, sigma, model_fn, "target")
        mask = self.mask
        if mask is None and rec["ca"]:
            mask = mask_from_attention(rec["ca"], run.latent_hw or tuple(base.shape[-2:]))
        if mask is not None:
            mask = mask.to(z.device)
        sa = {layer: (source[layer][0], a_tgt, grid) for layer, (a_tgt, grid) in rec["sa"].items() if layer in source}
        l_sa = sap_loss(sa, mask if c.sap_region == "mask" else None) if w_sa != 0 else None
        l_ca = caa_loss(rec["ca"], mask) if mask is not None and w_ca != 0 else None
        scaler = self._scaler(run, rec["dtype"])
        g_sa = self._grad(scaler, l_sa, z, retain=l_ca is not None)
        g_ca = self._grad(scaler, l_ca, z, retain=False)
        del rec, sa
        if g_sa is None and g_ca is None:
            return z.detach()
        direction = combine(g_sa, g_ca, c.mode, w_sa, w_ca)
        new = (z - c.step_size * sigma * direction).detach()
        if self.on_update is not None:
            self.on_update({"step": step, "iteration": it, "sigma": sigma, "w_sa": w_sa, "w_ca": w_ca,
                            "l_sa": None if l_sa is None else float(l_sa.detach()),
                            "l_ca": None if l_ca is None else float(l_ca.detach()),
                            "loss_scale": None if not scaler.enabled else float(scaler.scale),
                            "g_sa": g_sa, "g_ca": g_ca, "direction": direction.detach(), "z": z.detach(), "new": new})
        return new

    @staticmethod
    def _scaler(run, dtype):
        """The run's loss scaler: dynamic scaling for a float16 model, a plain gradient otherwise."""
        if SCALER_KEY not in run.store:
            run.store[SCALER_KEY] = LossScaler(enabled=dtype == torch.float16)
        return run.store[SCALER_KEY]

    @staticmethod
    def _grad(scaler, loss, z, retain):
        if loss is None or not loss.requires_grad:
            return None
        g = scaler.grad(loss, z, retain)
        return None if g is None else g.detach()


def alias(t):
    """A normal (non-inference) tensor sharing t's storage: no copy, no grad."""
    with torch.inference_mode(False):
        out = torch.empty(0, dtype=t.dtype, device=t.device)
        out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return out


class _WeightAlias:
    """Weight wrapper of one parameter: inside the optimiser's grad-enabled forward, hands autograd an alias of the
    parameter itself (a normal tensor on its storage, no grad) instead of the per-call copy ComfyUI makes for
    layers with weight functions, so backward keeps no copy of any weight; parameters made under inference mode
    (which autograd cannot save) work too. A weight that another function changed, or that ComfyUI cast to
    another dtype/device, is used as given (detached)."""

    def __init__(self, module, attr):
        self.module, self.attr = module, attr

    def __call__(self, w):
        if torch.is_inference_mode_enabled():
            return w
        p = getattr(self.module, self.attr, None)
        if (p is None or len(getattr(self.module, f"{self.attr}_function", ())) > 1 or p.dtype != w.dtype
                or p.device != w.device or p.shape != w.shape):
            return w.detach()
        return alias(p)

    def __deepcopy__(self, memo):
        return self


def grad_ready(model):
    """A clone of `model` ready for the optimiser's passes, via public patch points: weights reach autograd as
    aliases of the parameters (comfy.ops layers: a weight wrapper, active only while inference mode is off; other
    inference-mode parameters, e.g. Flux RMSNorm scales: an object patch with an alias); backward keeps no copy
    of a weight and no weight gradient is tracked. An APPLY_MODEL wrapper lets a pass forward one branch's rows only."""
    clone = model.clone()
    modules = dict(clone.model.named_modules())
    for name, param in clone.model.named_parameters():
        if not (param.is_inference() or param.requires_grad):
            continue
        owner, _, attr = name.rpartition(".")
        if attr in ("weight", "bias") and hasattr(modules.get(owner), "weight_function"):
            clone.add_weight_wrapper(name, _WeightAlias(modules[owner], attr))
        elif param.is_inference():
            with torch.inference_mode(False):
                clone.add_object_patch(name, torch.nn.Parameter(alias(param), requires_grad=False))
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, ROWS_WRAPPER_KEY, SelectRows())
    return clone
