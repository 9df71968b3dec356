"""Edit Sampler node: source, target and optional auxiliary branches from one inversion, in one batch."""
from ..latent_ops.edit import Branch, edit
from .inputs import CATEGORY, INVERSION


def branches_of(inversion, target_positive, target_cfg, source_cfg, source_positive=None, aux_positive=None,
                aux_cfg=1.0):
    """The Edit Sampler's / Edit Guider's branches from their inputs."""
    branches = [Branch("source", source_positive or inversion.positive, source_cfg),
                Branch("target", target_positive, target_cfg)]
    if aux_positive is not None:
        branches.append(Branch("aux", aux_positive, aux_cfg))
    return branches


class EditSampler:
    DESCRIPTION = ("Regenerates from an inversion with a source branch (exact replay or reconstruction), a target "
                   "branch and an optional auxiliary branch in one batch; attention patches on the MODEL see which "
                   "rows are source, target or auxiliary. With an unpatched MODEL this is inversion + regeneration.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "LATENT", "LATENT")
    RETURN_NAMES = ("edited", "source", "aux")
    OUTPUT_TOOLTIPS = ("The target branch.", "The source branch (the source itself when replayed, else the "
                       "reconstruction).", "The auxiliary branch (empty prompt when no aux prompt is given).")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for inversion, with the edit patches applied."}),
                "inversion": (INVERSION, {"tooltip": "From the Invert node (same model, same latent size)."}),
                "target_positive": ("CONDITIONING", {"tooltip": "The target prompt: what the image should become."}),
                "target_cfg": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                         "tooltip": "Guidance of the target branch."}),
                "source_mode": (["replay", "reconstruct"], {"default": "replay", "tooltip": "replay: the source "
                                "branch follows the stored trajectory exactly; reconstruct: it denoises freely."}),
                "source_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                         "tooltip": "Guidance of the source branch (reconstruct mode)."}),
                "start_step": ("INT", {"default": 0, "min": 0, "max": 999, "tooltip": "Skip the first steps: "
                                       "start from the trajectory at this step (smaller edits)."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; required when a cfg is not 1."}),
                "source_positive": ("CONDITIONING", {"tooltip": "Source prompt; defaults to the inversion's."}),
                "aux_positive": ("CONDITIONING", {"tooltip": "Adds an auxiliary branch with this prompt (UAM: an "
                                 "empty prompt with uniform attention)."}),
                "aux_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                      "tooltip": "Guidance of the auxiliary branch (UAM: 1, no CFG)."}),
                "drift_correction": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                     "Direct Inversion (PnP Inversion): after each step the target and aux branches "
                                     "also get this share of the replayed source branch's own error, so they "
                                     "inherit no inversion drift. Needs source_mode replay; 0: off."}),
            },
        }

    def run(self, model, inversion, target_positive, target_cfg, source_mode, source_cfg, start_step, negative=None,
            source_positive=None, aux_positive=None, aux_cfg=1.0, drift_correction=0.0):
        branches = branches_of(inversion, target_positive, target_cfg, source_cfg, source_positive, aux_positive,
                               aux_cfg)
        results, run = edit(model, inversion, branches, negative, source_mode, start_step,
                            drift_correction=drift_correction)
        run.release()
        aux = results.get("aux", results["source"])
        return ({"samples": results["target"]}, {"samples": results["source"]}, {"samples": aux})


NODE_CLASS_MAPPINGS = {"AttentionEditSampler": EditSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditSampler": "Edit Sampler (source / target / aux)"}
