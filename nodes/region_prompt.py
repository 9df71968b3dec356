"""Region Prompt node: encode the target prompt, draw its named words inside a mask (MODEL -> MODEL, CONDITIONING)."""
from ..attention.dit_families import family_key
from ..attention.hooks import with_controller
from ..attention.region_prompt import RegionPrompt as RegionPromptController
from ..latent_ops.attention_mask import word_token_positions
from ..latent_ops.masks import as_mask
from .inputs import ModelPatchNode


class RegionPrompt(ModelPatchNode):
    DESCRIPTION = ("Put the prompt's named words where the mask says, e.g. add 'a blue circle' inside a drawn mask. "
                   "Encodes the target prompt and patches the MODEL: in the Edit Sampler, Edit Guider and FlowEdit the "
                   "target branch's image queries attend more to those words inside the mask and less outside, and "
                   "(self_strength) more to their own region. U-Net: cross- and self-attention; Flux-family and the "
                   "other MMDiT models: joint attention. Pair it with Keep Outside Mask on the same mask "
                   "(cell_threshold 0.2) and Paste Source Outside Mask.")
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "target_positive")
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input MODEL is unchanged.",
                       "The prompt, encoded: connect it to the sampler's target_positive.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model you edit with."}),
                "clip": ("CLIP", {"tooltip": "The text encoder of the model (encodes the prompt, locates the words)."}),
                "mask": ("MASK", {"tooltip": "Where the words go (1 = inside). The image's size or the latent's; one "
                                             "mask or one per image."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "The target prompt. With a mask, "
                                      "say what the mask should contain, e.g. 'a blue circle on a black background'."}),
                "words": ("STRING", {"default": "", "tooltip": "The prompt's words to place inside the mask, e.g. "
                                     "'blue circle'."}),
                "strength": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": "Logit bias "
                             "on the words' text keys: + inside the mask, - outside (cross / joint attention). "
                             "10 measured best with self_strength 8 (docs/region_prompt.md)."}),
                "self_strength": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": "Logit "
                                  "bias on image keys of the query's own region (self / joint attention), so what is "
                                  "drawn inside is one thing; 0 = off. 8 measured best."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Share of "
                                "the edit's steps the bias acts in, fading linearly to 0 (layout is set early)."}),
            },
        }

    def patch(self, model, clip, mask, prompt, words, strength, self_strength, end_percent):
        mask = as_mask(mask, "mask")
        if not prompt.strip():
            raise ValueError("prompt: empty; enter the target prompt that names what the mask should contain")
        tokens = clip.tokenize(prompt)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        positions = word_token_positions(clip, prompt, words, family_key(model),
                                         cond_length=conditioning[0][0].shape[1], names=("words", "prompt"))
        controller = RegionPromptController(mask, positions, strength, self_strength, end_percent)
        return with_controller(model, controller), conditioning


NODE_CLASS_MAPPINGS = {"AttentionEditRegionPrompt": RegionPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditRegionPrompt": "Region Prompt"}
