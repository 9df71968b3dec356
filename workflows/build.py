"""Builds the example workflows: API format (workflows/api) and UI format (workflows/ui) from one definition.

    .venv/bin/python workflows/build.py          # (re)write every workflow file and the input images
The tests rebuild them in memory and fail when a file on disk is stale.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from graph import Graph  # noqa: E402

DEMO_CASE = "colour_red_to_yellow"  # the embedded workflows' edit (embedded/edit_cases.py)
REGION_CASE = "shape_circle_to_square"  # the embedded Region Prompt workflows' edit: new content in the mask
ADD_CASE = "layout_addition_3_top_edge"  # the embedded addition workflows' edit: a white circle where the mask is


def case_by_name(name):
    from embedded.edit_suite import benchmark_cases
    return next(c for c in benchmark_cases() if c.name == name)


def case_of(prompt):
    """The embedded edit case an API prompt edits, from its LoadImage file (input_image_name)."""
    [image] = [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"]
    prefix = input_image_name("")[:-len(".png")]
    return case_by_name(image[len(prefix):-len(".png")])


def source_pixels(case):
    """The case's source image as the embedded workflows load it: float RGB in [0, 1], [H, W, 3]."""
    import numpy as np
    from PIL import Image
    image = Image.open(HERE / "inputs" / input_image_name(case.name)).convert("RGB")
    return np.asarray(image, np.float32) / 255.0


def input_image_name(case_name):
    return f"attention_edit_case_{case_name}.png"


def mask_image_name(case_name):
    return f"attention_edit_case_{case_name}_mask.png"


def embedded_loaders(g, denoiser, case_name, with_target=True):
    """MODEL, CLIP, VAE, image, latent and the source / target / empty CONDITIONINGs (target None without
    with_target: a node of the workflow encodes its own, as Region Prompt does)."""
    case = case_by_name(case_name)
    source, target = case.source_prompt, case.target_prompt
    m = g.add("LoadEmbeddedEditModel", denoiser=denoiser)
    image = g.add("LoadImage", image=input_image_name(case_name))
    latent = g.add("VAEEncode", pixels=image[0], vae=m[2])
    src = g.add("CLIPTextEncode", title="source prompt", text=source, clip=m[1])
    tgt = g.add("CLIPTextEncode", title="target prompt", text=target, clip=m[1])[0] if with_target else None
    neg = g.add("CLIPTextEncode", title="negative / empty prompt", text="", clip=m[1])
    return m[0], m[1], m[2], image[0], latent[0], src[0], tgt, neg[0]


# The joint-attention families, with the file names of ComfyUI's own templates: diffusion model loader, text
# encoder(s), VAE, and the edit's steps / CFG (the templates' sampling settings; SD3.5 Large and Medium 28-40 steps
# at CFG 4.5-5.5, Qwen-Image 20 at 2.5, Z-Image Turbo 9 at 1.0, distilled). FlowEdit: the paper's SD3 setting on
# SD3.5 (T 50, n_max 33, CFG 3.5 / 13.5); on Qwen-Image and Z-Image Turbo not measured (the window scaled to
# their templates' steps, mild target guidance).
FAMILIES = {
    "sd35_large": dict(ckpt="sd3.5_large.safetensors", steps=28, cfg=4.5,
                       flowedit=dict(steps=50, n_max=33, source_cfg=3.5, target_cfg=13.5)),
    "sd35_medium": dict(ckpt="sd3.5_medium.safetensors", steps=40, cfg=4.5,
                        flowedit=dict(steps=50, n_max=33, source_cfg=3.5, target_cfg=13.5)),
    "qwen_image": dict(unet="qwen_image_fp8_e4m3fn.safetensors", clip="qwen_2.5_vl_7b_fp8_scaled.safetensors",
                       clip_type="qwen_image", vae="qwen_image_vae.safetensors", steps=20, cfg=2.5,
                       flowedit=dict(steps=28, n_max=24, source_cfg=1.5, target_cfg=4.0)),
    "z_image_turbo": dict(unet="z_image_turbo_bf16.safetensors", clip="qwen_3_4b.safetensors", clip_type="lumina2",
                          vae="ae.safetensors", steps=9, cfg=1.0,
                          flowedit=dict(steps=9, n_max=7, source_cfg=1.0, target_cfg=1.0)),
}


def family_loaders(g, family):
    """MODEL, CLIP, VAE of a joint-attention family from its template's files."""
    spec = FAMILIES[family]
    if "ckpt" in spec:  # SD3.5: the checkpoint (with its VAE) and the three text encoders
        ckpt = g.add("CheckpointLoaderSimple", ckpt_name=spec["ckpt"])
        clip = g.add("TripleCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="clip_g.safetensors",
                     clip_name3="t5xxl_fp16.safetensors")[0]
        return ckpt[0], clip, ckpt[2]
    model = g.add("UNETLoader", unet_name=spec["unet"], weight_dtype="default")[0]
    clip = g.add("CLIPLoader", clip_name=spec["clip"], type=spec["clip_type"], device="default")[0]
    return model, clip, g.add("VAELoader", vae_name=spec["vae"])[0]



# Flux-family checkpoints as ComfyUI's own templates name them (Comfy-Org repackaged files):
# (diffusion model, text encoder(s), CLIPLoader / DualCLIPLoader type, VAE)
FLUX_FAMILY_FILES = {
    "flux": ("flux1-dev.safetensors", ("clip_l.safetensors", "t5xxl_fp16.safetensors"), "flux", "ae.safetensors"),
    "flux_kontext": ("flux1-dev-kontext_fp8_scaled.safetensors",
                     ("clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"), "flux", "ae.safetensors"),
    "flux2": ("flux2_dev_fp8mixed.safetensors", ("mistral_3_small_flux2_bf16.safetensors",), "flux2",
              "flux2-vae.safetensors"),
    "chroma": ("Chroma1-HD.safetensors", ("t5xxl_fp16.safetensors",), "chroma", "ae.safetensors"),
}
GUIDANCE_DISTILLED = {"flux", "flux_kontext", "flux2"}  # cfg 1, FluxGuidance per branch
MMDIT = {"embedded_flux"} | set(FLUX_FAMILY_FILES) | set(FAMILIES)


def flux_family_loaders(g, family):
    unet, encoders, clip_type, vae_name = FLUX_FAMILY_FILES[family]
    model = g.add("UNETLoader", unet_name=unet, weight_dtype="default")[0]
    if len(encoders) == 2:
        clip = g.add("DualCLIPLoader", clip_name1=encoders[0], clip_name2=encoders[1], type=clip_type)[0]
    else:
        clip = g.add("CLIPLoader", clip_name=encoders[0], type=clip_type, device="default")[0]
    return model, clip, g.add("VAELoader", vae_name=vae_name)[0]



def real_loaders(g, family, with_target=True):
    """As embedded_loaders, for a real model family (its files as ComfyUI's templates name them)."""
    if family in FAMILIES:
        model, clip, vae = family_loaders(g, family)
    elif family in FLUX_FAMILY_FILES:
        model, clip, vae = flux_family_loaders(g, family)
    else:
        ckpt = g.add("CheckpointLoaderSimple", ckpt_name={"sd15": "v1-5-pruned-emaonly.safetensors",
                                                          "sdxl": "sd_xl_base_1.0.safetensors"}[family])
        model, clip, vae = ckpt[0], ckpt[1], ckpt[2]
    image = g.add("LoadImage", image="example.png")[0]
    if family == "flux_kontext":  # Kontext's preferred sizes, as ComfyUI's Kontext template does
        image = g.add("FluxKontextImageScale", image=image)[0]
    latent = g.add("VAEEncode", pixels=image, vae=vae)[0]
    src = g.add("CLIPTextEncode", title="source prompt", text="a photo of a cat sitting on a sofa", clip=clip)[0]
    tgt = g.add("CLIPTextEncode", title="target prompt", text="a photo of a dog sitting on a sofa",
                clip=clip)[0] if with_target else None
    neg = g.add("CLIPTextEncode", title="negative / empty prompt", text="", clip=clip)[0]
    src, tgt, neg = (reference(g, family, c, latent, what)
                     for c, what in ((src, "source prompt"), (tgt, "target prompt"), (neg, "empty prompt")))
    return model, clip, vae, image, latent, src, tgt, neg


def loaders(g, backbone, case_name, with_target=True):
    """embedded_loaders (the case's image) or real_loaders (example.png), by backbone; and the embedded case (None
    on a real model) as the last item."""
    if backbone.startswith("embedded"):
        return *embedded_loaders(g, backbone.split("_")[1], case_name, with_target), case_by_name(case_name)
    return *real_loaders(g, backbone, with_target), None


def reference(g, family, cond, latent, what):
    """FLUX.1 Kontext: the source image as the CONDITIONING's reference latent (every branch's: one model call
    shares it); other families, or no CONDITIONING: unchanged."""
    if family != "flux_kontext" or cond is None:
        return cond
    return g.add("ReferenceLatent", title=f"reference: {what}", conditioning=cond, latent=latent)[0]


def invert_edit_decode(g, model, vae, latent, src, tgt, neg, name, steps, cfg, flow, aux=None, cache_kv=False,
                       capture_steps="", after_invert=None, after_edit=None, sampler=None, before_save=None):
    """Invert -> Edit Sampler -> decode -> save; with `sampler` (a SAMPLER name), the Edit Guider and
    SamplerCustomAdvanced with that stock sampler instead of the Edit Sampler; before_save(g, image link) -> the
    image link to save (e.g. the source pasted back)."""
    inv = g.add("AttentionEditInvert", model=model, latent=latent, positive=src, steps=steps,
                                  scheduler="simple", solver="auto", cfg=1.0, capture_steps=capture_steps,
                                  cache_kv=cache_kv, cache_dtype="auto", cache_device="cpu")
    if after_invert is not None:
        inv = after_invert(g, inv)
    extra = {"aux_positive": aux, "aux_cfg": 1.0} if aux is not None else {}
    inputs = dict(model=model, inversion=inv[0], target_positive=tgt, target_cfg=cfg, source_mode="replay",
                  source_cfg=1.0, start_step=0, negative=neg, **extra)
    if sampler is None:
        edit = g.add("AttentionEditSampler", **inputs)
    else:
        guider = g.add("AttentionEditGuider", **inputs)
        edit = g.add("SamplerCustomAdvanced", noise=g.add("DisableNoise")[0], guider=guider[0],
                     sampler=g.add("KSamplerSelect", sampler_name=sampler)[0], sigmas=guider[1], latent_image=latent)
    image = g.add("VAEDecode", samples=edit[0], vae=vae)[0]
    if before_save is not None:
        image = before_save(g, image)
    g.add("SaveImage", images=image, filename_prefix=f"attention_edit/{name}")
    if after_edit is not None:
        after_edit(g, edit)
    return inv, edit


def real_sampling(backbone):
    """(steps, cfg) of the inversion-based edit on a real model: FLUX.1-dev, Kontext, FLUX.2 guidance-distilled
    (no CFG); Chroma CFG as its template (4); the joint-attention families their templates'; U-Nets 50 at 7.5."""
    if backbone in FAMILIES:
        return FAMILIES[backbone]["steps"], FAMILIES[backbone]["cfg"]
    return (15, 1.0) if backbone in GUIDANCE_DISTILLED else (26, 4.0) if backbone == "chroma" else (50, 7.5)


def edit_workflow(backbone, name, patch=None, aux=False, invert_empty=False, sampler=None):
    """Load -> (patch the MODEL) -> Invert -> Edit Sampler -> decode -> save, on the embedded or a real model.

    patch(g, ctx) adds technique nodes and returns the patched MODEL link; ctx has model, clip, vae, latent,
    image, src, tgt, neg links and the case.
    """
    g = Graph()
    model, clip, vae, image, latent, src, tgt, neg, case = loaders(g, backbone, DEMO_CASE)
    if case is not None:
        steps, cfg = 20, (3.0 if backbone in MMDIT else 4.0)
    else:
        steps, cfg = real_sampling(backbone)
        if backbone in GUIDANCE_DISTILLED:
            src, tgt, neg = flux_guidance(g, src, tgt, neg)
    ctx = dict(model=model, clip=clip, vae=vae, image=image, latent=latent, src=src, tgt=tgt, neg=neg,
               backbone=backbone, case=case, steps=steps)
    if patch is not None:
        model = patch(g, ctx)
    invert_edit_decode(g, model, vae, latent, neg if invert_empty else src, tgt, neg, f"{name}_{backbone}", steps,
                       cfg, backbone in MMDIT, aux=neg if aux else None, after_invert=ctx.get("after_invert"),
                       after_edit=ctx.get("after_edit"), sampler=sampler)
    return g


# ProEdit and RF-Solver-Edit on FLUX.1-dev invert at guidance 1 and edit at guidance 2; the flux_dev workflows of
# the U-Net papers' techniques (UAM, CPAM, MasaCtrl) use the same setting.
FLUX_INVERSION_GUIDANCE, FLUX_TARGET_GUIDANCE = 1.0, 2.0


def flux_guidance(g, src, tgt, neg):
    """FluxGuidance per branch: the source and empty prompts (inversion, source, aux) at the inversion's guidance,
    the target prompt at the edit's."""
    def guided(cond, what, value):
        return g.add("FluxGuidance", title=f"FLUX guidance: {what}", conditioning=cond, guidance=value)[0]
    return (guided(src, "source prompt", FLUX_INVERSION_GUIDANCE), guided(tgt, "target prompt", FLUX_TARGET_GUIDANCE),
            guided(neg, "empty prompt", FLUX_INVERSION_GUIDANCE))


def prompt_and_word(ctx):
    case = ctx["case"]
    return (case.source_prompt, case.word) if case is not None else ("a photo of a cat sitting on a sofa", "cat")


def source_mask(g, ctx):
    """The object mask of the source image: the case's exact mask (embedded) or a painted mask file."""
    name = mask_image_name(ctx["case"].name) if ctx["case"] is not None else "example_mask.png"
    return g.add("LoadImageMask", image=name, channel="red")[0]


def base_edit(backbone):
    """Plain inversion + regeneration with the target prompt (the baseline every technique improves on)."""
    return edit_workflow(backbone, "invert_edit")


# The Edit Guider example: ProEdit's patches under SamplerCustomAdvanced with a stock multistep sampler (any
# SAMPLER works; euler gives exactly the Edit Sampler's result).
GUIDER_SAMPLER = "dpmpp_2m"


def guider_edit(backbone):
    return edit_workflow(backbone, "edit_guider_proedit", proedit_patch, sampler=GUIDER_SAMPLER)


def uam_patch(g, ctx):
    """Uniform Attention Maps: uniform cross-attention on the aux branch (and during inversion) + adaptive blend;
    after the edit, a preview of the blend mask from the edited and source latents."""
    ctx["after_edit"] = blend_mask_preview
    model = g.add("AttentionEditUniformAttnPatch", model=ctx["model"], branches="aux", during_inversion=True)
    return g.add("AttentionEditBlend", model=model[0], mode="adaptive", into="target", fill="aux", quantile=0.5,
                 threshold_scale=1.0, T_mask=200, dilation=1)[0]


def blend_mask_preview(g, edit):
    """Blend Mask Preview of the Edit Sampler's edited and source latents, shown as an image."""
    mask = g.add("AttentionEditBlendMaskPreview", edited=edit[0], source=edit[1], quantile=0.5, threshold_scale=1.0,
                 dilation=1)
    g.add("PreviewImage", images=g.add("MaskToImage", mask=mask[0])[0])


def uam_edit(backbone):
    # The paper inverts with uniform maps and the empty prompt, so the aux branch (uniform + empty) retraces the
    # inversion; inverting with the source prompt instead left the aux fill off the source (artefacts in the blend).
    return edit_workflow(backbone, "uniform_attention_blend", uam_patch, aux=True, invert_empty=True)


def cpam_patch(g, ctx):
    """CPAM: self-attention preservation of the source object/background + localized cross-attention."""
    mask = ctx.get("mask") or source_mask(g, ctx)
    model = g.add("AttentionEditCPAMSelfAttention", model=ctx["model"], source_mask=mask, mode="change",
                  retain_object=False, step_threshold=3, layer_threshold=8, plain_fraction=0.1, seed=0,
                  target_mask_mode="source", mask_after_step=5, mask_threshold=0.3)
    return g.add("AttentionEditCPAMCrossAttention", model=model[0], source_mask=mask, target_mask_mode="source",
                 mask_after_step=5, mask_threshold=0.3)[0]


def attention_mask(g, ctx):
    """Edit Mask From Attention: the source prompt's attention to the edited word (no mask from the user). On the
    embedded models' 8x8 token grid no dilation measured best (mask IoU 0.50 vs 0.38 U-Net, 0.47 vs 0.40 Flux);
    real models keep ProEdit's one token."""
    text, word = prompt_and_word(ctx)
    return g.add("AttentionEditMaskFromAttention", model=ctx["model"], latent=ctx["latent"], positive=ctx["src"],
                 clip=ctx["clip"], source_prompt=text, word=word, dilation=0 if ctx["case"] is not None else 1,
                 image=ctx["image"], dit_layers="all double blocks")[0]


def keep_outside(g, model, mask, end_step=-1, grow=0, feather=0, start_step=0, cell_threshold=0.0):
    """Keep Outside Mask: the edited branches take the replayed source latent outside `mask` after every step."""
    return g.add("AttentionEditKeepOutsideMask", model=model, mask=mask, start_step=start_step, end_step=end_step,
                 grow=grow, feather=feather, cell_threshold=cell_threshold)[0]


def proedit_patch(g, ctx, shift=True):
    """ProEdit: edit mask from the source prompt's attention to the edited word, KV-mix, Latents-Shift."""
    mask = ctx.get("mask") or attention_mask(g, ctx)
    if shift:
        ctx["after_invert"] = lambda g, inv: g.add("AttentionEditLatentsShift", inversion=inv[0], mask=mask,
                                                   beta=0.25, seed=0)
    return g.add("AttentionEditKVMix", model=ctx["model"], delta=0.9, inject_steps=5, edit_type="change",
                 kv_source="batch", mask=mask)[0]


def proedit_edit(backbone):
    return edit_workflow(backbone, "proedit", proedit_patch)


def unifyedit_patch(g, ctx):
    """UnifyEdit: latent optimisation with self-attention preservation + cross-attention alignment (U-Net)."""
    case = ctx["case"]
    text = case.target_prompt if case is not None else "a photo of a dog sitting on a sofa"
    word = case.target_word if case is not None else "dog"
    scale = "1/2" if case is not None else "1/4"  # the embedded U-Net's coarsest attention grid is 1/2
    return g.add("AttentionEditSAPreserveOptimizer", model=ctx["model"], edit_tokens=word, gradient_mode="balanced",
                 beta1=1.0, beta2=1.0, k1=8.0, k2=8.0, iterations=5, step_size=2.5, active_steps=10,
                 sa_layers=scale, ca_layers=scale, attention_precision="float32", clip=ctx["clip"],
                 target_prompt=text, sap_region="full", layer_names="")[0]


def unifyedit_edit(backbone):
    return edit_workflow(backbone, "unifyedit", unifyedit_patch)


# Real checkpoints: the per-image search needs an image encoder and a text encoder whose pooled outputs share one
# embedding space. ComfyUI exposes such a pair as OpenCLIP ViT-bigG/14: CLIP_VISION clip_vision_g.safetensors (the
# SDXL Revision file) and the projected pooled output of a CLIP-G text encoder (SDXL's own CLIP; for SD1.5 and
# FLUX a stand-alone clip_g.safetensors). docs/region_mask.md ("Real checkpoints") explains why CLIP-L cannot be.
REGION_VISION_FILE = "clip_vision_g.safetensors"
REGION_TEXT_FILE = "clip_g.safetensors"
REAL_INSTRUCTION = "turn the cat into a dog"


def region_mask(g, ctx, mode=None):
    """Learnable Region Mask from the edit instruction. Embedded: the trained predictor on the domain encoders;
    real checkpoints: the per-image search (no trained weights) with ViT-bigG/14 vision + CLIP-G text."""
    case = ctx["case"]
    if case is not None:
        return g.add("AttentionEditLearnableRegionMask", image=ctx["image"], instruction=case.instruction,
                     mode=mode or "trained", threshold=0.5, weights="")[0]
    vision = g.add("CLIPVisionLoader", clip_name=REGION_VISION_FILE)[0]
    if ctx["backbone"] == "sdxl":
        text = ctx["clip"]  # SDXL's CLIP returns the projected CLIP-G pooled embedding
    else:
        text = g.add("CLIPLoader", title="region: CLIP-G text", clip_name=REGION_TEXT_FILE, type="stable_diffusion",
                     device="default")[0]
    return g.add("AttentionEditLearnableRegionMask", title="edit instruction", image=ctx["image"],
                 instruction=REAL_INSTRUCTION, mode=mode or "per-image search", threshold=0.5, clip_vision=vision,
                 clip=text, weights="")[0]


def region_proedit_patch(g, ctx):
    """Instruction-driven edit region (Learnable Region Mask) feeding ProEdit's KV-mix and Latents-Shift.
    ctx is updated in place: proedit_patch leaves the Latents-Shift step in ctx["after_invert"]."""
    ctx["mask"] = region_mask(g, ctx)
    return proedit_patch(g, ctx)


def region_proedit_edit(backbone):
    return edit_workflow(backbone, "region_mask_proedit", region_proedit_patch)


def source_injection_patch(g, ctx):
    """The feature-sharing baselines with their papers' layers and steps: MasaCtrl (source K/V) on U-Nets,
    RF-Solver-Edit (source V) on Flux."""
    mode = "value (RF-Solver-Edit)" if ctx["backbone"] in MMDIT else "key+value (MasaCtrl)"
    return g.add("AttentionEditSourceInjection", model=ctx["model"], mode=mode, start_step=-1, end_step=-1,
                 layers="paper default", layer_fraction=0.0)[0]


def source_injection_edit(backbone):
    return edit_workflow(backbone, "source_injection", source_injection_patch)


def cpam_edit(backbone):
    return edit_workflow(backbone, "cpam", cpam_patch, aux=True, invert_empty=True)


# FlowEdit settings. Embedded models (15 steps): the benchmark's best without a mask (a short window, mild target
# guidance) and with a mask protecting the rest (a longer window); docs/preservation.md has the sweep.
# FLUX.1-dev: the paper's (T 28, n_max 24, guidance 1.5 / 5.5 through FluxGuidance per branch, no CFG).
# FLUX.1 Kontext / FLUX.2 (guidance-distilled): FLUX.1-dev's. SD1.5 / SDXL and Chroma (real CFG): the paper's SD3
# setting (T 50, n_max 33, CFG 3.5 / 13.5): not measured on these models.
FLOWEDIT = {"embedded": (dict(steps=15, n_max=8, source_cfg=1.0, target_cfg=2.0),
                         dict(steps=15, n_max=12, source_cfg=1.0, target_cfg=3.0)),
            "flux": (dict(steps=28, n_max=24, source_cfg=1.0, target_cfg=1.0),) * 2,
            "unet": (dict(steps=50, n_max=33, source_cfg=3.5, target_cfg=13.5),) * 2}
FLOWEDIT_FLUX_GUIDANCE = (1.5, 5.5)
PASTE = dict(grow=2, feather=2)  # Paste Source Outside Mask after the drawn-mask FlowEdit (docs/preservation.md)


# Region Prompt with a drawn mask (docs/region_prompt.md): its settings, and Keep Outside Mask's latent cells count as
# inside from 20% coverage (soft edge cells fade an object drawn where there was none)
REGION_PROMPT = dict(strength=10.0, self_strength=8.0, end_percent=1.0)
REGION_PROMPT_CELL_THRESHOLD = 0.2
# The recolour with a drawn mask adds Plug-and-Play (the source's self-attention map on the target: its layout) in
# its paper's layers (U-Net decoder, Flux single blocks) over FlowEdit's whole window. The recolour and the
# addition paste the source back from the mask's own edge (the object stays inside its silhouette, no bleed into a
# grown seam; removals and new backgrounds keep PASTE's seam, where the old object's soft edge must go too);
# docs/region_prompt.md
EDGE_PASTE = dict(grow=0, feather=1)
# ... and both draw into the mask grown by half a latent cell (DRAW_GROW px), feeding Region Prompt (the alignment)
# and Keep Outside Mask: the new colour's or object's soft edge then falls outside the mask, where the paste cuts
# it, so the object fills its silhouette (in the mask alone, added objects came out too small and recolours of one
# of two objects left part of the old colour)
DRAW_GROW = 4


def drawing_region(g, mask):
    """Where the recolour or the new object is drawn: the drawn mask grown by DRAW_GROW px (ComfyUI's GrowMask)."""
    return g.add("GrowMask", title="where it is drawn: the mask grown by half a latent cell", mask=mask,
                 expand=DRAW_GROW, tapered_corners=True)[0]


def region_text(ctx, recolour=False):
    """(prompt, words) of what the mask should contain: the embedded case's, else the real examples'."""
    if ctx["case"] is not None:
        from embedded.edit_cases import local_prompt, region_words
        return local_prompt(ctx["case"]), region_words(ctx["case"])
    if recolour:
        return "a white cat sitting on a sofa", "white cat"
    return "a small brown dog sitting on a sofa", "small brown dog"


def region_prompt(g, ctx, model, mask, recolour=False):
    """Region Prompt: the words of what the mask should contain drawn inside it -> (MODEL, target CONDITIONING)."""
    prompt, words = region_text(ctx, recolour)
    node = g.add("AttentionEditRegionPrompt", title="region prompt", model=model,
                 clip=ctx["clip"], mask=mask, prompt=prompt, words=words, **REGION_PROMPT)
    return node[0], node[1]


def paste_back(g, decoded, image, mask, silhouette=False):
    """Paste Source Outside Mask: the source's own pixels outside `mask`, from the mask's own edge (silhouette:
    EDGE_PASTE) or over PASTE's 2 px seam."""
    return g.add("AttentionEditPasteOutsideMask", image=decoded, source=image, mask=mask,
                 **(EDGE_PASTE if silhouette else PASTE))[0]


def flowedit_workflow(backbone, name, drawn_mask, region=False, plug_and_play=False, case_name=DEMO_CASE,
                      silhouette=False):
    """Load -> FlowEdit (MODEL with Keep Outside Mask) -> decode -> paste -> save. The kept region is outside the
    mask from attention (no mask from the user) or outside a drawn mask (the case's exact mask / example_mask.png);
    region: Region Prompt puts what the drawn mask should contain inside it; plug_and_play: the source's layout
    through Plug-and-Play (the recolour); case_name: the embedded models' edit; silhouette: drawn into the mask's
    silhouette (the recolour, the addition): Region Prompt and Keep Outside Mask on drawing_region, the paste from
    the mask's own edge."""
    g = Graph()
    model, clip, vae, image, latent, src, tgt, neg, case = loaders(g, backbone, case_name, with_target=not region)
    if case is not None:
        settings = FLOWEDIT["embedded"][drawn_mask]
    else:
        settings = (FAMILIES[backbone]["flowedit"] if backbone in FAMILIES else
                    FLOWEDIT["flux" if backbone in GUIDANCE_DISTILLED else "unet"][drawn_mask])
    ctx = dict(model=model, clip=clip, vae=vae, image=image, latent=latent, src=src, tgt=tgt, neg=neg,
               backbone=backbone, case=case)
    mask = source_mask(g, ctx) if drawn_mask else attention_mask(g, ctx)
    edited = drawing_region(g, mask) if silhouette else mask
    if plug_and_play:
        model = g.add("AttentionEditSourceInjection", title="plug-and-play: the source's layout", model=model,
                      mode="query+key (Plug-and-Play)", start_step=0, end_step=settings["n_max"],
                      layers="paper default", layer_fraction=0.0)[0]
    if region:
        model, tgt = region_prompt(g, ctx, model, edited, recolour=plug_and_play)
        tgt = reference(g, backbone, tgt, latent, "region prompt")
    model = keep_outside(g, model, edited, cell_threshold=REGION_PROMPT_CELL_THRESHOLD if region else 0.0)
    if backbone in GUIDANCE_DISTILLED:
        guided = lambda cond, what, v: g.add("FluxGuidance", title=f"FLUX guidance: {what}", conditioning=cond,
                                             guidance=v)[0]
        src, tgt = guided(src, "source prompt", FLOWEDIT_FLUX_GUIDANCE[0]), guided(tgt, "target prompt",
                                                                                 FLOWEDIT_FLUX_GUIDANCE[1])
    edit = g.add("AttentionEditFlowEdit", model=model, latent=latent, source_positive=src, target_positive=tgt,
                 scheduler="simple", n_min=0, n_avg=1, seed=0, negative=neg, **settings)
    decoded = g.add("VAEDecode", samples=edit[0], vae=vae)
    # outside the mask, the source's own pixels (no VAE round trip): +2.4 (U-Net) / +7.3 (Flux) dB with the mask
    # from attention, 32.6 -> 59.8 (U-Net) / 58.5 (Flux) dB with a drawn mask (docs/preservation.md)
    decoded = paste_back(g, decoded[0], image, mask, silhouette)
    g.add("SaveImage", images=decoded, filename_prefix=f"attention_edit/{name}_{backbone}")
    return g


def flowedit_edit(backbone):
    """The recommended edit without a mask: FlowEdit, keeping the source outside the mask from attention."""
    return flowedit_workflow(backbone, "flowedit_keep", drawn_mask=False)


def flowedit_masked_edit(backbone):
    """The recommended recolour with a drawn mask: FlowEdit keeping the source outside the mask, Region Prompt with
    the new colour inside it, Plug-and-Play keeping the source's layout."""
    return flowedit_workflow(backbone, "flowedit_keep_mask", drawn_mask=True, region=True, plug_and_play=True,
                             silhouette=True)


def flowedit_region_edit(backbone):
    """The recommended edit with a drawn mask (replace, remove, a new background): FlowEdit with Region Prompt."""
    return flowedit_workflow(backbone, "flowedit_region_mask", drawn_mask=True, region=True, case_name=REGION_CASE)


# Adding an object where a drawn mask says (docs/region_prompt.md). U-Nets: Region Prompt, UnifyEdit's
# cross-attention alignment alone (beta1 0: no self-attention preservation, the object is new), Keep Outside Mask
# (cells from 20%), the Edit Sampler; MMDiT: the Region Prompt FlowEdit. Both in drawing_region, pasted from the edge
ADD_ALIGNMENT = dict(gradient_mode="balanced", beta1=0.0, beta2=2.0, k1=8.0, k2=8.0, iterations=5, step_size=2.5,
                     active_steps=10, attention_precision="float32", sap_region="full", layer_names="")


def add_alignment(g, ctx, model, mask):
    """SAPreserveOptimizer as cross-attention alignment of the Region Prompt's words to the mask."""
    prompt, words = region_text(ctx)
    scale = "1/2" if ctx["case"] is not None else "1/4"  # the embedded U-Net's coarsest attention grid is 1/2
    return g.add("AttentionEditSAPreserveOptimizer", title="align the new object to the mask", model=model,
                 edit_tokens=words, sa_layers=scale, ca_layers=scale, mask=mask, clip=ctx["clip"],
                 target_prompt=prompt, **ADD_ALIGNMENT)[0]


def region_add_edit(backbone):
    """The recommended addition with a drawn mask. U-Nets: Region Prompt + cross-attention alignment + Keep Outside
    Mask -> Invert -> Edit Sampler -> decode; MMDiT (SAPreserveOptimizer is U-Net only): the Region Prompt FlowEdit.
    Both draw into drawing_region and paste the source back from the mask's own edge."""
    name = f"region_add_mask_{backbone}"
    if backbone in MMDIT:
        return flowedit_workflow(backbone, "region_add_mask", drawn_mask=True, region=True, case_name=ADD_CASE,
                                 silhouette=True)
    g = Graph()
    model, clip, vae, image, latent, src, _, neg, case = loaders(g, backbone, ADD_CASE, with_target=False)
    steps, cfg = (15, 4.0) if case is not None else real_sampling(backbone)  # 15: as measured
    ctx = dict(clip=clip, case=case)
    mask = source_mask(g, ctx)
    edited = drawing_region(g, mask)
    model, tgt = region_prompt(g, ctx, model, edited)
    model = keep_outside(g, add_alignment(g, ctx, model, edited), edited,
                         cell_threshold=REGION_PROMPT_CELL_THRESHOLD)
    invert_edit_decode(g, model, vae, latent, src, tgt, neg, name, steps, cfg, False,
                       before_save=lambda g, decoded: paste_back(g, decoded, image, mask, silhouette=True))
    return g


BACKBONES = {"embedded_unet": "embedded_unet", "embedded_flux": "embedded_flux", "sd15": "sd15", "sdxl": "sdxl",
             "flux_dev": "flux", "flux_kontext_dev": "flux_kontext", "flux2_dev": "flux2", "chroma": "chroma",
             **{family: family for family in FAMILIES}}
TECHNIQUES = {"invert_edit": base_edit, "uniform_attention_blend": uam_edit, "cpam": cpam_edit,
              "proedit": proedit_edit, "unifyedit": unifyedit_edit, "region_mask_proedit": region_proedit_edit,
              "source_injection": source_injection_edit, "flowedit_keep": flowedit_edit,
              "edit_guider_proedit": guider_edit,
              "flowedit_keep_mask": flowedit_masked_edit, "flowedit_region_mask": flowedit_region_edit,
              "region_add_mask": region_add_edit}
UNET_ONLY = {"unifyedit"}  # refused on MMDiT models (Flux: residuals updated in place block latent gradients)
WORKFLOWS = {f"{t}_{b}": (lambda make=make, backbone=backbone: make(backbone))
             for t, make in TECHNIQUES.items() for b, backbone in BACKBONES.items()
             if not (t in UNET_ONLY and backbone in MMDIT)}


def embedded(name):
    return "embedded" in name


def build_all():
    """{name: (api prompt, ui workflow)}; needs ComfyUI booted with the pack loaded."""
    from harness.workflow_format import api_to_ui
    out = {}
    for name, make in WORKFLOWS.items():
        g = make()
        out[name] = (g.prompt, api_to_ui(g.prompt, g.titles))
    return out


def write_input_images():
    """The embedded cases' source images, rendered exactly by the procedural domain."""
    import numpy as np
    from PIL import Image
    from embedded.dataset import render_scene
    for old in (HERE / "inputs").glob("attention_edit_*.png"):
        old.unlink()
    for name in (DEMO_CASE, REGION_CASE, ADD_CASE):
        case = case_by_name(name)
        image, _ = render_scene(case.source, 64)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(HERE / "inputs" / input_image_name(name))
        edit_mask, _ = case.masks(64)
        Image.fromarray(((edit_mask > 0.5) * 255).astype(np.uint8)).save(HERE / "inputs" / mask_image_name(name))


def main():
    from harness import runtime
    runtime.boot()
    for name, (api, ui) in build_all().items():
        (HERE / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")
        (HERE / "ui" / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
    write_input_images()
    print(f"wrote {len(WORKFLOWS)} workflows")


if __name__ == "__main__":
    main()
