"""Edit Guider node: the Edit Sampler's branches as a GUIDER, so SamplerCustomAdvanced runs the edit with any SAMPLER."""
from ..latent_ops.edit import EditRun
from ..latent_ops.edit_guider import EditGuider as Guider
from .edit_sampler import EditSampler, branches_of
from .inputs import CATEGORY


class EditGuider:
    DESCRIPTION = ("The Edit Sampler as a GUIDER for SamplerCustomAdvanced: any SAMPLER (euler, dpmpp_2m, ...) "
                   "denoises the source, target and aux branches in one batch, and the MODEL's attention patches "
                   "see the branches as in the Edit Sampler. Connect its sigmas output as the SIGMAS (the inversion's "
                   "schedule from start_step) and the source latent as latent_image; the guider starts from the "
                   "inversion, so the NOISE input is not used (DisableNoise fits). The replayed source follows its "
                   "stored trajectory at every sigma the sampler evaluates; the output is the target branch. With "
                   "euler the result equals the Edit Sampler's.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("GUIDER", "SIGMAS")
    RETURN_NAMES = ("guider", "sigmas")
    OUTPUT_TOOLTIPS = ("For SamplerCustomAdvanced's guider input.",
                       "The inversion's sigma schedule from start_step: SamplerCustomAdvanced's sigmas input.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return EditSampler.INPUT_TYPES()

    def build(self, model, inversion, target_positive, target_cfg, source_mode, source_cfg, start_step,
              negative=None, source_positive=None, aux_positive=None, aux_cfg=1.0, drift_correction=0.0):
        branches = branches_of(inversion, target_positive, target_cfg, source_cfg, source_positive, aux_positive,
                               aux_cfg)
        guider = Guider(EditRun(model, inversion, branches, negative, source_mode, start_step, drift_correction))
        return (guider, guider.schedule())


NODE_CLASS_MAPPINGS = {"AttentionEditGuider": EditGuider}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditGuider": "Edit Guider (SamplerCustomAdvanced, any sampler)"}
