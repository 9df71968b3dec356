"""Keep Outside Mask node: blended latent diffusion on the Edit Sampler's or FlowEdit's edited branches."""
from ..latent_ops.latent_hooks import with_latent_hook
from ..latent_ops.masks import as_mask
from ..latent_ops.paste import paste_outside
from ..latent_ops.preserve import PreserveHook
from .inputs import CATEGORY, ModelPatchNode


class KeepOutsideMask(ModelPatchNode):
    DESCRIPTION = ("Mask-guided preservation: after each step of the chosen range, the edited branches take the "
                   "replayed source latent outside the mask (blended latent diffusion), so what the mask leaves out "
                   "stays as the source. Any MASK works: drawn, Edit Mask From Attention, Learnable Region Mask. "
                   "Composes with every technique on U-Net and Flux-family models; acts in the Edit Sampler and "
                   "FlowEdit.")
    OUTPUT_TOOLTIPS = ("The MODEL with the preservation; connect it to the Edit Sampler or FlowEdit.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to edit with (after the technique patches or before: "
                                               "the blend acts on latents, not on attention)."}),
                "mask": ("MASK", {"tooltip": "1 = may change, 0 = keep the source. The image's size (or the "
                                             "latent's); one mask or one per image."}),
                "start_step": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "First sampling step after "
                               "which the blend acts."}),
                "end_step": ("INT", {"default": -1, "min": -1, "max": 1000, "tooltip": "Last step after which the "
                             "blend acts; -1: the last step (outside the mask ends exactly on the source). Stop a few "
                             "steps early to let the seam harmonise."}),
                "grow": ("INT", {"default": 0, "min": 0, "max": 16, "tooltip": "Grow the mask by this many latent "
                         "cells (8 px on SD/Flux VAEs) before blending."}),
                "feather": ("INT", {"default": 0, "min": 0, "max": 16, "tooltip": "Soften the mask edge outward "
                            "over this many latent cells (box blur; never shrinks the mask)."}),
            },
            "optional": {
                "cell_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.05, "tooltip":
                                   "0: a latent cell on the mask's edge keeps the source by the share of it outside "
                                   "the mask (best when recolouring: the object keeps its size). Above 0: a cell "
                                   "more than this share inside may change fully, the others keep the source "
                                   "(best when adding an object where there was none: soft edge cells fade it; "
                                   "0.2 measured best, docs/preservation.md)."}),
            },
        }

    def patch(self, model, mask, start_step, end_step, grow, feather, cell_threshold=0.0):
        as_mask(mask)
        return (with_latent_hook(model, PreserveHook(mask, start_step, end_step, grow, feather, cell_threshold)),)


class PasteOutsideMask:
    DESCRIPTION = ("Pixel-exact preservation after decoding: outside the mask the result is the source image's own "
                   "pixels, inside it the edit. Latent blending keeps the outside only as well as the VAE "
                   "reconstructs it; this makes it exact. Use it after VAE Decode with the mask given to Keep "
                   "Outside Mask.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The edit inside the mask, the source's pixels outside it.",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The edited image (VAE Decode of the edit)."}),
                "source": ("IMAGE", {"tooltip": "The source image that was edited, at the same size."}),
                "mask": ("MASK", {"tooltip": "1 = keep the edit, 0 = paste the source. The image's size or any size "
                                             "of the same aspect ratio; one mask or one per image."}),
                "grow": ("INT", {"default": 2, "min": 0, "max": 256, "tooltip": "Grow the mask by this many pixels "
                         "first, so the edit's own edge (antialiasing, a slightly larger result) is not cut."}),
                "feather": ("INT", {"default": 2, "min": 0, "max": 256, "tooltip": "Soften the seam over this many "
                            "pixels inside the grown mask; outside it every pixel stays the source's."}),
            },
        }

    def paste(self, image, source, mask, grow, feather):
        return (paste_outside(image, source, as_mask(mask), grow, feather),)


NODE_CLASS_MAPPINGS = {"AttentionEditKeepOutsideMask": KeepOutsideMask, "AttentionEditPasteOutsideMask": PasteOutsideMask}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditKeepOutsideMask": "Keep Outside Mask (latent blend preservation)",
                              "AttentionEditPasteOutsideMask": "Paste Source Outside Mask (pixel-exact preservation)"}
