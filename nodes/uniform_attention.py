"""Uniform Attention Maps (UAM) nodes: UniformAttnPatch, Blend (adaptive / fixed mask) and Blend Mask Preview."""

import torch.nn.functional as F

from ..attention.hooks import with_controller
from ..attention.uniform import BRANCH_CHOICES, UniformAttention
from ..latent_ops.blend import MODES, ROLES, BlendHook, adaptive_mask, gate_sigma
from ..latent_ops.guided_loop import is_flow
from ..latent_ops.latent_hooks import with_latent_hook
from ..latent_ops.masks import PIXELS_PER_LATENT
from .inputs import CATEGORY, ModelPatchNode


class UniformAttnPatch(ModelPatchNode):
    DESCRIPTION = ("Uniform Attention Maps: on the chosen branches every text-attention map becomes the constant 1/N "
                   "over the N text tokens (U-Net cross-attention: the output is the mean of V, independent of the "
                   "image). Flux/MMDiT (our extension): image queries keep their total attention to the text but "
                   "spread it evenly over the text tokens. Self-attention is untouched. Connect the patched MODEL to "
                   "Invert and the Edit Sampler (add aux_positive, usually an empty prompt, for the aux branch).")
    OUTPUT_TOOLTIPS = ("The MODEL with uniform text attention on the chosen branches (the input is not changed).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A U-Net (SD1.x, SD2.x, SDXL) or Flux-family model."}),
            "branches": (list(BRANCH_CHOICES), {"default": "aux", "tooltip": "Rows of the Edit Sampler batch that "
                         "get uniform maps. aux: the auxiliary branch (UAM editing); all: every branch, and plain "
                         "KSampler runs too (faithful reconstruction); target / source: that branch only."}),
            "during_inversion": ("BOOLEAN", {"default": True, "tooltip": "Also use uniform maps while the Invert "
                                 "node inverts (the paper inverts with uniform maps and an empty prompt)."}),
        }}

    def patch(self, model, branches, during_inversion):
        return (with_controller(model, UniformAttention(branches, during_inversion)),)


class Blend(ModelPatchNode):
    DESCRIPTION = ("Mask-guided blending of the predicted clean latents between Edit Sampler branches. adaptive "
                   "(UAM): where target and source predictions differ (above threshold_scale x the quantile of the "
                   "difference, the quantile ramping up to `quantile` over the steps, dilated) the branch keeps its "
                   "content; elsewhere it takes the fill branch (aux: the uniform-attention reconstruction), during "
                   "the steps below T_mask. fixed_mask: the same with a given MASK (1 keeps the branch).")
    OUTPUT_TOOLTIPS = ("The MODEL carrying the blend for the Edit Sampler (the input is not changed).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model you edit with (any family the Edit Sampler supports)."}),
                "mode": (list(MODES), {"default": "adaptive", "tooltip": "adaptive: the UAM mask from the "
                         "target/source difference at every step (needs a source branch); fixed_mask: the MASK input."}),
                "into": (list(ROLES), {"default": "target", "tooltip": "The branch whose prediction is blended."}),
                "fill": (list(ROLES), {"default": "aux", "tooltip": "The branch that fills where the mask is 0 (aux "
                         "needs aux_positive on the Edit Sampler)."}),
                "quantile": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "adaptive: "
                             "final quantile of the difference used as threshold (higher keeps more of the fill)."}),
                "threshold_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip":
                                    "adaptive: mask = difference > scale x threshold; 1 is the paper's text (better "
                                    "on the edit benchmark), 2 what the authors' code computes."}),
                "T_mask": ("INT", {"default": 200, "min": 0, "max": 1000, "tooltip": "Blend only below this timestep "
                           "of 1000 (eps/v models: that share of the noise schedule; flow models: sigma < T/1000). "
                           "1000: every step."}),
                "dilation": ("INT", {"default": 1, "min": 0, "max": 8, "tooltip": "adaptive: radius of the square "
                             "max-pool dilation in latent cells (1: 3x3; 0: none)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "fixed_mask: 1 keeps the branch, 0 takes the fill branch; resized to "
                         "the latent (one mask, or one per image)."}),
            },
        }

    def patch(self, model, mode, into, fill, quantile, threshold_scale, T_mask, dilation, mask=None):
        if into == fill:
            raise ValueError("fill: choose a branch other than `into` to blend from")
        if mode == "fixed_mask" and mask is None:
            raise ValueError("mask: mode is fixed_mask, so connect a MASK (or switch mode to adaptive)")
        if mode == "adaptive" and into == "source":
            raise ValueError("into: the adaptive mask compares `into` with the source branch; choose target or aux")
        flow = is_flow(model)
        gate = gate_sigma(model.get_model_object("model_sampling"), T_mask, flow)
        hook = BlendHook(mode, into, fill, quantile, threshold_scale, dilation, gate, flow,
                         mask if mode == "fixed_mask" else None)
        return (with_latent_hook(model, hook),)


class BlendMaskPreview:
    DESCRIPTION = ("Shows the adaptive Blend mask formula applied to two LATENTs, e.g. the Edit Sampler's edited and "
                   "source outputs (at the final quantile: an approximation of the mask of the last blended step). "
                   "The per-step masks of a run are kept in the run's store under 'blend_masks' for scripts.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK",)
    OUTPUT_TOOLTIPS = ("Share of latent channels where the branch keeps its own content (1: all), at pixel size "
                       "(latent x 8).",)
    FUNCTION = "preview"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "edited": ("LATENT", {"tooltip": "The target (edited) latent."}),
            "source": ("LATENT", {"tooltip": "The source latent to compare with."}),
            "quantile": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "Quantile of the difference used as threshold."}),
            "threshold_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                          "tooltip": "mask = difference > scale x threshold."}),
            "dilation": ("INT", {"default": 1, "min": 0, "max": 8, "tooltip": "Dilation radius in latent cells."}),
        }}

    def preview(self, edited, source, quantile, threshold_scale, dilation):
        a, b = edited["samples"], source["samples"]
        if a.shape != b.shape:
            raise ValueError(f"source: its latent shape {tuple(b.shape)} differs from edited {tuple(a.shape)}")
        if a.ndim != 4:
            raise ValueError("edited: the preview needs image latents [batch, channels, height, width]")
        mask = adaptive_mask(a, b, quantile, threshold_scale, dilation).mean(dim=1, keepdim=True)
        mask = F.interpolate(mask, scale_factor=PIXELS_PER_LATENT, mode="nearest")
        return (mask[:, 0],)


NODE_CLASS_MAPPINGS = {
    "AttentionEditUniformAttnPatch": UniformAttnPatch,
    "AttentionEditBlend": Blend,
    "AttentionEditBlendMaskPreview": BlendMaskPreview,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionEditUniformAttnPatch": "Uniform Attention Maps (UAM patch)",
    "AttentionEditBlend": "Blend (adaptive UAM mask / fixed mask)",
    "AttentionEditBlendMaskPreview": "Blend Mask Preview",
}
