"""CPAM nodes: self-attention preservation adaptation and localized cross-attention extraction (MODEL -> MODEL)."""
from ..attention.cpam import LocalizedCrossAttention, SelfAttentionPreservation
from ..attention.hooks import self_attention_layers, with_controller
from ..latent_ops.cpam_masks import MODES, TargetMask
from ..latent_ops.masks import as_mask
from .inputs import ModelPatchNode, parse_steps

_TARGET_INPUTS = {
    "target_mask_mode": (list(MODES), {"default": "source", "tooltip": "How the target mask M_t (where the edited "
                         "object goes) is made: 'source' = the source mask; 'cross_attention' = the source mask for "
                         "the first mask_after_step steps, then the target's own cross-attention maps of the "
                         "mask_tokens; 'given' = the target_mask input."}),
    "mask_after_step": ("INT", {"default": 5, "min": 0, "max": 1000, "tooltip": "cross_attention mode: steps that "
                        "use the source mask before the attention-derived mask takes over (T_m)."}),
    "mask_threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                       "cross_attention mode: threshold on the max-normalised aggregated map."}),
}
_TARGET_OPTIONAL = {
    "target_mask": ("MASK", {"tooltip": "The target mask for mode 'given' (pixel or latent size)."}),
    "mask_tokens": ("STRING", {"default": "", "tooltip": "cross_attention mode: 0-based token positions of the "
                    "edited words in the target prompt, e.g. '2' or '2-3' (CLIP prompts start with a BOS token at "
                    "position 0)."}),
}


def _target(model_key, mode, source_mask, target_mask, mask_tokens, mask_after_step, mask_threshold):
    tokens = sorted(parse_steps(mask_tokens or "", None, "mask_tokens"))
    return TargetMask(mode, source_mask, target_mask, tokens, mask_after_step, mask_threshold,
                      key=f"cpam_target_maps_{model_key}")


class _ModelPatch(ModelPatchNode):
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input MODEL is unchanged.",)


class CPAMSelfAttentionPreservation(_ModelPatch):
    DESCRIPTION = ("CPAM preservation adaptation: in the edit sampler's target branch, self-attention of background "
                   "queries reads the source image's background (keys outside the source mask), object queries read "
                   "the source object (retain_object, after step T and layer L) or generate freely; 'remove' makes "
                   "every query read only the source background. U-Net: self-attention layers; Flux: the image keys "
                   "of joint attention. Connect the result to the Edit Sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the source was inverted with (U-Net or Flux)."}),
                "source_mask": ("MASK", {"tooltip": "M_s: the object in the source image (1 = object), pixel or "
                                "latent size."}),
                "mode": (["change", "remove"], {"default": "change", "tooltip": "change: edit the masked object; "
                         "remove: every query attends only to the source background (object removal)."}),
                "retain_object": ("BOOLEAN", {"default": False, "tooltip": "Keep the source object's appearance "
                                  "(pose / view changes): object queries read the source object keys after step T "
                                  "and layer L. Off: the object is generated from the target prompt."}),
                "step_threshold": ("INT", {"default": 3, "min": 0, "max": 1000, "tooltip": "T: object retention "
                                   "acts at steps > T (0-based, counted from the start of the schedule)."}),
                "layer_threshold": ("INT", {"default": 8, "min": 0, "max": 1000, "tooltip": "L: object retention "
                                    "acts in self-attention layers > L (0-based, forward order; SD1.5 has 16)."}),
                "plain_fraction": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "Share of layers (redrawn each step) that keep plain self-attention, for "
                                   "coherence between object and background."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random layer "
                         "choice."}),
                **_TARGET_INPUTS,
            },
            "optional": dict(_TARGET_OPTIONAL),
        }

    def patch(self, model, source_mask, mode, retain_object, step_threshold, layer_threshold, plain_fraction, seed,
              target_mask_mode, mask_after_step, mask_threshold, target_mask=None, mask_tokens=""):
        source = as_mask(source_mask, "source_mask")
        target = _target(f"sa{id(self)}", target_mask_mode, source, target_mask, mask_tokens, mask_after_step,
                         mask_threshold)
        for c in target.controllers():
            model = with_controller(model, c)
        controller = SelfAttentionPreservation(source, target, self_attention_layers(model), mode, retain_object,
                                               step_threshold, layer_threshold, plain_fraction, seed)
        return (with_controller(model, controller),)


class CPAMLocalizedCrossAttention(_ModelPatch):
    DESCRIPTION = ("CPAM localized extraction: in the edit sampler's target branch, image queries inside the target "
                   "mask attend to the target prompt, the others to the empty prompt, so only the masked region "
                   "follows the edit. The empty prompt's K/V come from the Edit Sampler's aux branch: connect an "
                   "empty-prompt CONDITIONING to its aux_positive. U-Net: cross-attention; Flux: the text keys of "
                   "joint attention.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the source was inverted with (U-Net or Flux)."}),
                "source_mask": ("MASK", {"tooltip": "M_s: the object in the source image (1 = object); the target "
                                "mask in mode 'source' and before mask_after_step."}),
                **_TARGET_INPUTS,
            },
            "optional": dict(_TARGET_OPTIONAL),
        }

    def patch(self, model, source_mask, target_mask_mode, mask_after_step, mask_threshold, target_mask=None,
              mask_tokens=""):
        source = as_mask(source_mask, "source_mask")
        target = _target(f"le{id(self)}", target_mask_mode, source, target_mask, mask_tokens, mask_after_step,
                         mask_threshold)
        for c in target.controllers():
            model = with_controller(model, c)
        return (with_controller(model, LocalizedCrossAttention(target)),)


NODE_CLASS_MAPPINGS = {
    "AttentionEditCPAMSelfAttention": CPAMSelfAttentionPreservation,
    "AttentionEditCPAMCrossAttention": CPAMLocalizedCrossAttention,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionEditCPAMSelfAttention": "CPAM Self-Attention Preservation",
    "AttentionEditCPAMCrossAttention": "CPAM Localized Cross-Attention",
}
