"""Builders for small ComfyUI models (U-Net eps/v; Flux-family MMDiT: FLUX.1, FLUX.2, Chroma; SD3, Qwen-Image and
Lumina 2 / Z-Image for the tests) for the embedded default and the tests.

Every model is a stock ComfyUI class (comfy.model_base.BaseModel / SDXL / Flux / Flux2 / Chroma / SD3 / QwenImage /
Lumina2) wrapped in a stock
ModelPatcher, so every ComfyUI node and every patch point treats it exactly like a real checkpoint.
"""
import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base


# Latent -> preview colour of the pack's autoencoder (least squares over 256 training scenes, mean error 0.31 of the
# range [-1, 1]; embedded/fit_preview_factors.py): ComfyUI's latent previews for the embedded models.
PREVIEW_RGB_FACTORS = [[-0.1396, 0.2406, -0.0781], [-0.2262, -0.1947, -0.0512], [-0.2444, -0.3454, -0.3513],
                       [-0.4997, -0.1225, 0.3257]]
PREVIEW_RGB_BIAS = [-0.0576, -0.3932, -0.2785]


class SmallLatentFormat(comfy.latent_formats.LatentFormat):
    """4-channel latent space of the pack's own autoencoder; scale and shift are set per model. The preview
    factors act on the model's (scaled, shifted) latent, so they are rescaled here."""
    latent_channels = 4

    def __init__(self, scale_factor=1.0, shift_factor=0.0):
        self.scale_factor = scale_factor
        self.shift_factor = shift_factor
        self.latent_rgb_factors = [[f / scale_factor for f in row] for row in PREVIEW_RGB_FACTORS]
        self.latent_rgb_factors_bias = [b + shift_factor * sum(row[c] for row in PREVIEW_RGB_FACTORS)
                                        for c, b in enumerate(PREVIEW_RGB_BIAS)]

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor + self.shift_factor


class SmallVideoLatentFormat(SmallLatentFormat):
    """The same, for models that take [B, C, T, H, W] latents (Qwen-Image: ComfyUI adds the T axis itself)."""
    latent_dimensions = 3


class SmallModelConfig(comfy.supported_models_base.BASE):
    """Model config for a small model: everything comes from the instance's unet_config."""
    unet_extra_config = {}
    latent_format = SmallLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32, torch.float16, torch.bfloat16]

    def __init__(self, unet_config, latent_scale=1.0, latent_shift=0.0, sampling_settings=None):
        super().__init__(unet_config)
        self.latent_format = SmallLatentFormat(latent_scale, latent_shift)
        self.sampling_settings = dict(sampling_settings or {})


def unet_config(context_dim=32, model_channels=32, channel_mult=(1, 2), head_channels=16, adm_in_channels=None,
                depth=1, linear=False):
    """An SD-style UNetModel config: one res block per level, self- and cross-attention at every level."""
    levels = len(channel_mult)
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [1] * levels, "channel_mult": list(channel_mult),
        "transformer_depth": [depth] * levels, "transformer_depth_output": [depth] * (2 * levels),
        "transformer_depth_middle": depth, "num_head_channels": head_channels, "num_heads": -1,
        "context_dim": context_dim, "use_spatial_transformer": True, "legacy": False,
        "use_linear_in_transformer": linear, "adm_in_channels": adm_in_channels,
        "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": torch.float32,
        "num_classes": "sequential" if adm_in_channels else None,
    }


def flux_config(context_dim=32, pooled_dim=32, hidden_size=64, heads=4, double_blocks=2, single_blocks=2,
                guidance_embed=True, patch_size=2):
    """A Flux-architecture MMDiT config over a 4-channel latent (FLUX.1 uses 2x2 patches; 1 gives one token per
    latent cell)."""
    head_dim = hidden_size // heads
    axes = [head_dim - 2 * (head_dim // 8 * 3), head_dim // 8 * 3, head_dim // 8 * 3]
    return {
        "image_model": "flux", "in_channels": 4, "out_channels": 4, "vec_in_dim": pooled_dim,
        "context_in_dim": context_dim, "hidden_size": hidden_size, "mlp_ratio": 4.0, "num_heads": heads,
        "depth": double_blocks, "depth_single_blocks": single_blocks, "axes_dim": axes, "theta": 10000,
        "patch_size": patch_size, "qkv_bias": True, "guidance_embed": guidance_embed, "dtype": torch.float32,
    }


def flux2_config(context_dim=32, hidden_size=64, heads=4, double_blocks=2, single_blocks=2, patch_size=1):
    """A FLUX.2-architecture config (ComfyUI's "flux2" detection: global modulation, SiLU-gated MLPs, no biases,
    no pooled vector, 4 RoPE axes, reference latents by index) over a 4-channel latent; FLUX.2 uses 1x1 patches."""
    axis = hidden_size // heads // 4
    return {
        "image_model": "flux2", "in_channels": 4, "out_channels": 4, "vec_in_dim": None,
        "context_in_dim": context_dim, "hidden_size": hidden_size, "mlp_ratio": 3.0, "num_heads": heads,
        "depth": double_blocks, "depth_single_blocks": single_blocks, "axes_dim": [axis] * 4, "theta": 2000,
        "patch_size": patch_size, "qkv_bias": False, "guidance_embed": True, "global_modulation": True,
        "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
        "dtype": torch.float32,
    }


def chroma_config(context_dim=32, hidden_size=64, heads=4, double_blocks=2, single_blocks=2, patch_size=2):
    """A Chroma config (ComfyUI's "chroma" detection: Flux blocks without per-block modulation, an approximator
    that makes every modulation vector from timestep and guidance) over a 4-channel latent. The approximator's input
    is 64 wide (16 + 16 timestep/guidance features + 32 index features), as in ComfyUI's Chroma."""
    head_dim = hidden_size // heads
    axes = [head_dim - 2 * (head_dim // 8 * 3), head_dim // 8 * 3, head_dim // 8 * 3]
    channels = 4 * patch_size * patch_size  # Chroma's img_in takes whole patches
    return {
        "image_model": "chroma", "in_channels": channels, "out_channels": channels, "context_in_dim": context_dim,
        "hidden_size": hidden_size, "mlp_ratio": 4.0, "num_heads": heads, "depth": double_blocks,
        "depth_single_blocks": single_blocks, "axes_dim": axes, "theta": 10000, "patch_size": patch_size,
        "qkv_bias": True, "in_dim": 64, "out_dim": hidden_size, "hidden_dim": 32, "n_layers": 2,
        "dtype": torch.float32,
    }


def refused_family_configs(context_dim=32):
    """Tiny configs of the families ComfyUI 0.3.75 runs and the pack refuses ({kind: (comfy.model_base class name,
    config)}): enough to build the model and check the refusal; they are never sampled."""
    radiance = dict(chroma_config(context_dim, patch_size=16), image_model="chroma_radiance", in_channels=3,
                    out_channels=3, nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4,
                    nerf_tile_size=0, nerf_final_head_type="linear", nerf_embedder_dtype=None)
    return {
        "chroma_radiance": ("ChromaRadiance", radiance),
        "hidream": ("HiDream", {
            "image_model": "hidream", "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 1,
            "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
            "caption_channels": [context_dim, context_dim], "text_emb_dim": context_dim, "num_routed_experts": 2,
            "num_activated_experts": 1, "axes_dims_rope": (8, 8), "max_resolution": (32, 32), "llama_layers": [0],
            "dtype": torch.float32}),
        "hunyuan_image21": ("HunyuanImage21", {
            "image_model": "hunyuan_video", "in_channels": 4, "out_channels": 4, "vec_in_dim": None,
            "context_in_dim": context_dim, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 4, "depth": 1,
            "depth_single_blocks": 1, "axes_dim": [8, 8], "theta": 256, "patch_size": [1, 1], "qkv_bias": True,
            "guidance_embed": False, "byt5": False, "meanflow": False, "use_cond_type_embedding": False,
            "vision_in_dim": None, "dtype": torch.float32}),
        "wan21": ("WAN21", {
            "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 8, "in_dim": 4,
            "dim": 32, "ffn_dim": 64, "freq_dim": 32, "text_dim": context_dim, "out_dim": 4, "num_heads": 2,
            "num_layers": 1, "dtype": torch.float32}),
    }


def init_weights_(module, seed):
    """Explicitly initialise every parameter (ComfyUI layers skip init): scaled normals, unit norm gains."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("weight") or name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module


def _patcher(model, state_dict, seed):
    if state_dict is None:
        init_weights_(model.diffusion_model, seed)
    else:
        missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.diffusion_model.to(model.diffusion_model.dtype or torch.float32)  # the config's dtype (float32 default)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_unet(config, state_dict=None, prediction="eps", latent_scale=1.0, latent_shift=0.0, seed=0):
    """A ModelPatcher around comfy.model_base.BaseModel (or SDXL when the config has adm channels)."""
    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    model_config = SmallModelConfig(config, latent_scale, latent_shift)
    cls = comfy.model_base.SDXL if config.get("adm_in_channels") else comfy.model_base.BaseModel
    return _patcher(cls(model_config, model_type=model_type), state_dict, seed)


FLUX_BASES = {"flux": comfy.model_base.Flux, "flux2": comfy.model_base.Flux2, "chroma": comfy.model_base.Chroma}


def build_flux(config, state_dict=None, latent_scale=1.0, latent_shift=0.0, shift=1.0, seed=0):
    """A ModelPatcher around comfy.model_base.Flux, Flux2 or Chroma (by the config's image_model; rectified flow,
    CONST sampling)."""
    model_config = SmallModelConfig(config, latent_scale, latent_shift, {"shift": shift})
    return _patcher(FLUX_BASES[config.get("image_model", "flux")](model_config), state_dict, seed)


def build_refused(kind, context_dim=32, seed=0):
    """A ModelPatcher around the comfy.model_base class of a refused family (refused_family_configs)."""
    base, config = refused_family_configs(context_dim)[kind]
    return _patcher(getattr(comfy.model_base, base)(SmallModelConfig(config)), None, seed)


def sd3_config(context_dim=32, pooled_dim=32, depth=3, dual_attention_layers=(0,), patch_size=2, max_tokens=16):
    """An SD3-architecture MMDiT config (hidden 64 x depth, depth heads, as SD3 ties them); SD3.5 Medium-style
    dual attention (an image-only second attention) in `dual_attention_layers`."""
    return {
        "in_channels": 4, "out_channels": 4, "patch_size": patch_size, "depth": depth,
        "adm_in_channels": pooled_dim, "pos_embed_max_size": max_tokens, "num_patches": max_tokens ** 2,
        "pos_embed_scaling_factor": None, "qk_norm": "rms", "x_block_self_attn_layers": list(dual_attention_layers),
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": context_dim, "out_features": 64 * depth}},
        "dtype": torch.float32,
    }


def qwen_image_config(context_dim=32, layers=2, heads=4, head_dim=16):
    """A Qwen-Image-architecture config over a 4-channel latent (2x2 patches packed into 16 input channels)."""
    axes = [head_dim - 2 * (head_dim // 8 * 3), head_dim // 8 * 3, head_dim // 8 * 3]
    return {
        "image_model": "qwen_image", "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": layers,
        "attention_head_dim": head_dim, "num_attention_heads": heads, "joint_attention_dim": context_dim,
        "axes_dims_rope": axes, "dtype": torch.float32,
    }


def lumina2_config(context_dim=32, dim=64, heads=4, kv_heads=2, layers=2, refiner_layers=1, z_image=False):
    """A Lumina 2 NextDiT config (grouped K/V heads); z_image: Z-Image's variant (full K/V heads, its modulation,
    time scale 1000, caption and image tokens padded to a multiple of 32; its modulation needs dim >= 256)."""
    dim = max(dim, 256) if z_image else dim
    head_dim = dim // heads
    axes = [head_dim - 2 * (head_dim // 8 * 3), head_dim // 8 * 3, head_dim // 8 * 3]
    config = {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 4, "dim": dim, "n_layers": layers,
        "n_refiner_layers": refiner_layers, "n_heads": heads, "n_kv_heads": kv_heads, "multiple_of": 16,
        "ffn_dim_multiplier": 4.0, "qk_norm": True, "cap_feat_dim": context_dim, "axes_dims": axes,
        "axes_lens": [300, 64, 64], "rope_theta": 10000.0, "dtype": torch.float32,
    }
    if z_image:
        config.update(n_kv_heads=heads, ffn_dim_multiplier=8.0 / 3.0, rope_theta=256.0, z_image_modulation=True,
                      time_scale=1000.0, pad_tokens_multiple=32)
    return config


# model_base class, latent format, sampling settings (ComfyUI's supported_models) of each joint-attention family
FAMILY_MODELS = {
    "sd3": (comfy.model_base.SD3, SmallLatentFormat, {"shift": 3.0}),
    "qwen_image": (comfy.model_base.QwenImage, SmallVideoLatentFormat, {"multiplier": 1.0, "shift": 1.15}),
    "lumina2": (comfy.model_base.Lumina2, SmallLatentFormat, {"multiplier": 1.0, "shift": 6.0}),
    "z_image": (comfy.model_base.Lumina2, SmallLatentFormat, {"multiplier": 1.0, "shift": 3.0}),
}


def build_family(family, config, state_dict=None, seed=0):
    """A ModelPatcher around ComfyUI's model class of `family` (a key of FAMILY_MODELS), flow sampling."""
    cls, latent_format, sampling = FAMILY_MODELS[family]
    model_config = SmallModelConfig(config, sampling_settings=sampling)
    model_config.latent_format = latent_format()
    model = cls(model_config)
    if state_dict is None:  # buffers ComfyUI leaves empty (SD3's positional embedding table)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for b in model.diffusion_model.buffers():
                if b.is_floating_point():
                    b.copy_(0.5 * torch.randn(b.shape, generator=gen))
    return _patcher(model, state_dict, seed)


def sd15_unet_config(dtype=torch.float32):
    """The full SD1.5 U-Net config (860 M params): 320 channels, mult (1,2,4,4), 2 res blocks, 8 heads, context 768."""
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1] * 9 + [0] * 3,
        "transformer_depth_middle": 1, "num_heads": 8, "num_head_channels": -1, "context_dim": 768,
        "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": False,
        "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
        "dtype": dtype, "num_classes": None,
    }


def flux_dev_config(dtype=torch.bfloat16):
    """The FLUX.1-dev MMDiT config (12 B params): 19 double and 38 single blocks, hidden 3072, 24 heads."""
    return {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
        "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
        "dtype": dtype,
    }


def sdxl_unet_config(dtype=torch.float16):
    """The full SDXL base U-Net config (2.6 B params), as ComfyUI's model detection gives it: 320 channels,
    mult (1,2,4), transformer depths 0/2/10, 64-channel heads, context 2048, adm 2816 (pooled 1280 + 6 x 256)."""
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10, "num_heads": -1, "num_head_channels": 64, "context_dim": 2048,
        "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": True,
        "adm_in_channels": 2816, "use_temporal_attention": False, "use_temporal_resblock": False,
        "dtype": dtype, "num_classes": "sequential",
    }
