"""FlowEdit node: inversion-free editing with the source, target (and aux) branches in one batch."""
import comfy.sample
import comfy.samplers

from ..latent_ops.flowedit import flow_edit
from .inputs import CATEGORY


class FlowEdit:
    DESCRIPTION = ("FlowEdit (Kulikov et al.): edits without inversion by integrating the difference between the "
                   "target and source predictions along noisy copies of the source, averaged over noise draws. The "
                   "MODEL's attention patches (KV-Mix, CPAM, ...) see the source, target and aux rows as in the Edit "
                   "Sampler, and Keep Outside Mask applies. SA-Preserve Optimizer and Blend act before the model "
                   "call or on its denoised estimate, which FlowEdit has not: it refuses them (use the Edit Sampler). "
                   "Flow models (FLUX, SD3) as in the paper; eps/v U-Nets run the same ODE in ComfyUI's sigma "
                   "parameterisation.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("edited",)
    OUTPUT_TOOLTIPS = ("The edited latent.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model, with any of the pack's patches."}),
                "latent": ("LATENT", {"tooltip": "The source image, VAE-encoded."}),
                "source_positive": ("CONDITIONING", {"tooltip": "Describes the source image."}),
                "target_positive": ("CONDITIONING", {"tooltip": "Describes the edited image."}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 1000, "tooltip": "T: steps of the schedule "
                                  "(paper: 28 on FLUX, 50 on SD3)."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "simple", "tooltip": "Sigma schedule."}),
                "n_max": ("INT", {"default": 24, "min": 1, "max": 1000, "tooltip": "The edit starts at step "
                                  "T - n_max (paper: 24 of 28 on FLUX, 33 of 50 on SD3); larger: stronger edits, "
                                  "less preservation."}),
                "n_min": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "The last n_min steps are plain "
                                  "sampling of the target (0: FlowEdit to the end)."}),
                "n_avg": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Noise draws averaged per step "
                                  "(each costs one evaluation of every branch)."}),
                "source_cfg": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                         "tooltip": "Guidance of the source prediction (paper FLUX: 1.5)."}),
                "target_cfg": ("FLOAT", {"default": 5.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                         "tooltip": "Guidance of the target prediction (paper FLUX: 5.5)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Seed of the noise draws."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; required when a cfg is not 1."}),
                "aux_positive": ("CONDITIONING", {"tooltip": "Adds an aux branch (CPAM reads the empty prompt's "
                                 "text K/V from it)."}),
                "aux_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                      "tooltip": "Guidance of the aux branch."}),
            },
        }

    def run(self, model, latent, source_positive, target_positive, steps, scheduler, n_max, n_min, n_avg,
            source_cfg, target_cfg, seed, negative=None, aux_positive=None, aux_cfg=1.0):
        results, run = flow_edit(model, comfy.sample.fix_empty_latent_channels(model, latent["samples"]), source_positive, target_positive, negative, steps,
                                 scheduler, n_max, n_min, n_avg, source_cfg, target_cfg, seed, aux_positive, aux_cfg)
        run.release()
        return ({"samples": results["target"]},)


NODE_CLASS_MAPPINGS = {"AttentionEditFlowEdit": FlowEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditFlowEdit": "FlowEdit (inversion-free, takes attention patches)"}
