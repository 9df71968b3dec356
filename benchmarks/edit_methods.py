"""The benchmark's methods as graphs of the pack's nodes on the embedded models.

build(method, denoiser, case, image_name, steps) -> (API prompt, node id of the edited IMAGE, node id of the
reconstruction IMAGE or None). Technique methods reuse the MODEL patches of the example workflows
(workflows/build.py), so the benchmark measures exactly what the workflows ship.
"""
import build as workflows  # noqa: I001 (workflows/ is on sys.path)
from graph import Graph
from embedded.edit_cases import local_prompt, region_words

CFG = {"unet": 4.0, "flux": 3.0}
UNET_ONLY = {"unifyedit", "unifyedit_drift"}  # see workflows/build.py UNET_ONLY
FLUX_ONLY = {"rf_solver_edit_v"}  # RF-Solver-Edit shares V in FLUX single blocks


def _loaders(g, denoiser, case, image_name, steps):
    """The embedded model, the case's image, its latent, exact edit mask and prompts: the graph context."""
    m = g.add("LoadEmbeddedEditModel", denoiser=denoiser)
    image = g.add("LoadImage", image=image_name)
    mask = g.add("LoadImageMask", image=image_name.replace(".png", "_mask.png"), channel="red")
    latent = g.add("VAEEncode", pixels=image[0], vae=m[2])
    prompts = {"source": case.source_prompt, "target": case.target_prompt, "empty": ""}
    enc = {k: g.add("CLIPTextEncode", text=v, clip=m[1])[0] for k, v in prompts.items()}
    return dict(model=m[0], clip=m[1], vae=m[2], latent=latent[0], image=image[0], mask=mask[0], src=enc["source"],
                tgt=enc["target"], neg=enc["empty"], enc=enc, backbone=f"embedded_{denoiser}", case=case, steps=steps)


def _graph(denoiser, case, image_name, steps, patch=None, invert_with="source", target_with="target",
           target_cfg=None, aux=False, source_mode="replay", exact_iterations=None, drift=0.0, start_step=0):
    g = Graph()
    ctx = _loaders(g, denoiser, case, image_name, steps)
    enc, m, latent = ctx["enc"], [ctx["model"], ctx["clip"], ctx["vae"]], [ctx["latent"]]
    model = patch(g, ctx) if patch else m[0]
    exact = {} if exact_iterations is None else {"exact_iterations": exact_iterations}
    inv = g.add("AttentionEditInvert", model=model, latent=latent[0], positive=enc[invert_with], steps=steps,
                scheduler="simple", solver="auto", cfg=1.0, **exact)
    if ctx.get("after_invert"):
        inv = ctx["after_invert"](g, inv)
    extra = {"aux_positive": enc["empty"], "aux_cfg": 1.0} if aux else {}
    extra.update({"drift_correction": drift} if drift else {})
    edit = g.add("AttentionEditSampler", model=model, inversion=inv[0], target_positive=enc[target_with],
                 target_cfg=CFG[denoiser] if target_cfg is None else target_cfg, source_mode=source_mode,
                 source_cfg=1.0, start_step=start_step, negative=enc["empty"], source_positive=enc[invert_with],
                 **extra)
    edited = _pasted(g, ctx, g.add("VAEDecode", samples=edit[0], vae=m[2]))
    recon = g.add("VAEDecode", samples=edit[1], vae=m[2]) if source_mode == "reconstruct" else None
    for image_node in (edited, recon):
        if image_node is not None:  # an output node, so ComfyUI executes the graph
            g.add("PreviewImage", images=image_node[0])
    return g.prompt, edited.id, recon.id if recon else None


def _pasted(g, ctx, decoded):
    """The decoded edit, or (Keep Outside Mask with paste=True) the source's pixels pasted outside its mask."""
    if ctx.get("paste_mask") is None:
        return decoded
    return g.add("AttentionEditPasteOutsideMask", image=decoded[0], source=ctx["image"], mask=ctx["paste_mask"],
                 **ctx.get("paste", workflows.PASTE))


def _decoded(g, ctx, samples):
    edited = _pasted(g, ctx, g.add("VAEDecode", samples=samples, vae=ctx["vae"]))
    g.add("PreviewImage", images=edited[0])
    return g.prompt, edited.id, None


def _vae_roundtrip(denoiser, case, image_name, steps):
    """The source through the VAE and back: the ceiling of every background number."""
    g = Graph()
    ctx = _loaders(g, denoiser, case, image_name, steps)
    return _decoded(g, ctx, ctx["latent"])


# FlowEdit on the embedded models: the example workflows' settings (without a mask / with a mask protecting the
# rest), minus their step count (the benchmark sets its own)
FLOWEDIT, FLOWEDIT_MASKED = ({k: v for k, v in settings.items() if k != "steps"}
                             for settings in workflows.FLOWEDIT["embedded"])


def _flowedit(patch=None, **overrides):
    """FlowEdit with the MODEL patched by `patch` (any of the pack's techniques, Keep Outside Mask, ...)."""
    def build(denoiser, case, image_name, steps):
        g = Graph()
        ctx = _loaders(g, denoiser, case, image_name, steps)
        model = patch(g, ctx) if patch else ctx["model"]
        options = dict(overrides)  # never mutate the closure's dict: build runs once per case
        aux = {"aux_positive": ctx["neg"], "aux_cfg": 1.0} if options.pop("aux", False) else {}
        settings = dict(FLOWEDIT, n_min=0, n_avg=1, **options)
        edit = g.add("AttentionEditFlowEdit", model=model, latent=ctx["latent"], source_positive=ctx["src"],
                     target_positive=ctx["tgt"], steps=steps, scheduler="simple", seed=0, negative=ctx["neg"],
                     **settings, **aux)
        return _decoded(g, ctx, edit[0])
    return build


def _keep(technique=None, mask="exact", paste=False, **keep):
    """`technique`'s MODEL patch followed by Keep Outside Mask with ctx["mask"] (the exact edit mask unless the
    technique replaced it) or ("attention") a mask from attention; paste: the decoded edit then gets the source's
    pixels outside the same mask (Paste Source Outside Mask)."""
    def patch(g, ctx):
        model = technique(g, ctx) if technique else ctx["model"]
        chosen = ctx["mask"] if mask == "exact" else workflows.attention_mask(g, ctx)
        ctx["paste_mask"] = chosen if paste else None
        return workflows.keep_outside(g, model, chosen, **keep)
    return patch


def _uniform_everywhere(g, ctx):
    return g.add("AttentionEditUniformAttnPatch", model=ctx["model"], branches="all", during_inversion=True)[0]


def _with_mask(technique, make_mask):
    """A technique's MODEL patch with ctx["mask"] = make_mask(g, ctx) instead of the exact edit mask. ctx is
    updated in place, not copied: ProEdit leaves its Latents-Shift step in ctx["after_invert"] for _graph."""
    def patch(g, ctx):
        ctx["mask"] = make_mask(g, ctx)
        return technique(g, ctx)
    return patch


def _predicted_mask(technique, mode):
    """The Learnable Region Mask's mask (from case.instruction, e.g. 'remove the square') in place of the exact
    edit mask: issue 9's predicted-vs-ground-truth comparison."""
    return _with_mask(technique, lambda g, ctx: workflows.region_mask(g, ctx, mode))


def _source_injection(mode, end_step=-1, layers="paper default"):
    """Source Attention Injection; by default with the paper's steps and layers (scaled to the model and steps)."""
    return lambda g, ctx: g.add("AttentionEditSourceInjection", model=ctx["model"], mode=mode, start_step=-1,
                                end_step=end_step, layers=layers, layer_fraction=0.0)[0]


METHODS = {
    # baselines
    "vae_roundtrip": _vae_roundtrip,
    "target_prompt": lambda d, c, i, s: _graph(d, c, i, s, source_mode="reconstruct"),
    "target_prompt_explicit_inversion": lambda d, c, i, s: _graph(d, c, i, s, source_mode="reconstruct",
                                                                  exact_iterations=0),
    # reconstruction (UAM Table 1): invert + regenerate, no CFG; the 'edited' image is the reconstruction
    "recon_empty_prompt": lambda d, c, i, s: _graph(d, c, i, s, invert_with="empty", target_with="empty",
                                                    target_cfg=1.0, source_mode="reconstruct"),
    "recon_source_prompt": lambda d, c, i, s: _graph(d, c, i, s, target_with="source", target_cfg=1.0,
                                                     source_mode="reconstruct"),
    "recon_source_prompt_explicit": lambda d, c, i, s: _graph(d, c, i, s, target_with="source", target_cfg=1.0,
                                                              source_mode="reconstruct", exact_iterations=0),
    "recon_uniform_maps": lambda d, c, i, s: _graph(d, c, i, s, patch=_uniform_everywhere, target_with="source",
                                                    target_cfg=1.0, source_mode="reconstruct"),
    "recon_uniform_maps_empty": lambda d, c, i, s: _graph(d, c, i, s, patch=_uniform_everywhere, invert_with="empty",
                                                          target_with="empty", target_cfg=1.0,
                                                          source_mode="reconstruct"),
    # techniques
    "uam_blend": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.uam_patch, aux=True, invert_with="empty"),
    "proedit_exact_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.proedit_patch),
    "kvmix_only_exact_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=lambda g, x: workflows.proedit_patch(
        g, x, shift=False)),
    "proedit_attention_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_with_mask(workflows.proedit_patch,
                                                                                      lambda g, x: None)),
    "unifyedit": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.unifyedit_patch),
    "cpam": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.cpam_patch, aux=True, invert_with="empty"),
    # source-injection baselines (MasaCtrl mutual self-attention; RF-Solver-Edit V sharing, Flux only)
    "masactrl": lambda d, c, i, s: _graph(d, c, i, s, patch=_source_injection("key+value (MasaCtrl)")),
    "rf_solver_edit_v": lambda d, c, i, s: _graph(d, c, i, s, patch=_source_injection("value (RF-Solver-Edit)")),
    # UAM on top of MasaCtrl (the paper's Table 3 pairs: "DDIM + Masa" vs "+ Ours")
    "masactrl_uam_blend": lambda d, c, i, s: _graph(d, c, i, s, patch=lambda g, x: workflows.uam_patch(
        g, dict(x, model=_source_injection("key+value (MasaCtrl)")(g, x))), aux=True, invert_with="empty"),
    # V-only injection with KV-Mix's strength (every layer, the example's first 5 steps) but no mask: isolates
    # what ProEdit's mask-restricted K+V mixing adds over unmasked V sharing
    "v_injection_kvmix_steps": lambda d, c, i, s: _graph(d, c, i, s, patch=_source_injection(
        "value (RF-Solver-Edit)", end_step=5, layers="all")),
    # the same techniques with the mask predicted from the instruction (trained predictor / per-image search)
    "proedit_region_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_predicted_mask(workflows.proedit_patch,
                                                                                       "trained")),
    "proedit_region_search": lambda d, c, i, s: _graph(d, c, i, s, patch=_predicted_mask(workflows.proedit_patch,
                                                                                         "per-image search")),
    "cpam_region_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_predicted_mask(workflows.cpam_patch, "trained"),
                                                  aux=True, invert_with="empty"),
    # preservation: Direct Inversion drift correction on every technique
    "target_prompt_drift": lambda d, c, i, s: _graph(d, c, i, s, drift=1.0),
    "uam_blend_drift": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.uam_patch, aux=True, invert_with="empty",
                                                 drift=1.0),
    "proedit_exact_mask_drift": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.proedit_patch, drift=1.0),
    "cpam_drift": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.cpam_patch, aux=True, invert_with="empty",
                                            drift=1.0),
    "masactrl_drift": lambda d, c, i, s: _graph(d, c, i, s, patch=_source_injection("key+value (MasaCtrl)"), drift=1.0),
    "unifyedit_drift": lambda d, c, i, s: _graph(d, c, i, s, patch=workflows.unifyedit_patch, drift=1.0),
    # preservation: Keep Outside Mask with the exact mask or the mask from attention (no mask from the user)
    "keep_exact_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep()),
    "keep_attention_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep(mask="attention")),
    "proedit_keep_exact_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep(workflows.proedit_patch)),
    "proedit_keep_attention_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep(
        _with_mask(workflows.proedit_patch, workflows.attention_mask))),
    "cpam_keep_exact_mask": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep(workflows.cpam_patch), aux=True,
                                                      invert_with="empty"),
    # FlowEdit, alone, with the pack's attention patches, and with Keep Outside Mask
    "flowedit": _flowedit(),
    "flowedit_kvmix_exact_mask": _flowedit(lambda g, x: workflows.proedit_patch(g, x, shift=False)),
    "flowedit_cpam": _flowedit(workflows.cpam_patch, aux=True),
    "flowedit_keep_attention_mask": _flowedit(_keep(mask="attention")),
    "flowedit_keep_exact_mask": _flowedit(_keep(), **FLOWEDIT_MASKED),
    # ... then the source's own pixels pasted back outside the same mask
    "keep_exact_mask_paste": lambda d, c, i, s: _graph(d, c, i, s, patch=_keep(paste=True)),
    "flowedit_keep_attention_mask_paste": _flowedit(_keep(mask="attention", paste=True)),
    "flowedit_keep_exact_mask_paste": _flowedit(_keep(paste=True), **FLOWEDIT_MASKED),
}


def _local(builder):
    """`builder` with the target prompt replaced by the case's local prompt (the mask's content only)."""
    def build(denoiser, case, image_name, steps):
        prompt, edited, recon = builder(denoiser, case, image_name, steps)
        for node in prompt.values():
            if node["class_type"] == "CLIPTextEncode" and node["inputs"]["text"] == case.target_prompt:
                node["inputs"]["text"] = local_prompt(case)
        return prompt, edited, recon
    return build


# with a drawn mask, the target prompt describes what the mask should contain (recolour one of two objects: the
# other object's colour no longer competes for the masked region)
METHODS["flowedit_keep_exact_mask_paste_local"] = _local(METHODS["flowedit_keep_exact_mask_paste"])
METHODS["keep_exact_mask_paste_local"] = _local(METHODS["keep_exact_mask_paste"])


def _region(**settings):
    """Region Prompt on the exact mask with the local prompt as the target prompt (workflows.REGION_PROMPT's
    settings, overridden by `settings`); its CONDITIONING becomes the target's."""
    def patch(g, ctx):
        case = ctx["case"]
        node = g.add("AttentionEditRegionPrompt", model=ctx["model"], clip=ctx["clip"], mask=ctx["mask"],
                     prompt=local_prompt(case), words=region_words(case), **{**workflows.REGION_PROMPT, **settings})
        ctx["enc"]["target"] = ctx["tgt"] = node[1]
        return node[0]
    return patch


def _chain(*patches):
    """MODEL patches applied in order (each sees the previous one's MODEL as ctx["model"])."""
    def patch(g, ctx):
        for p in patches:
            ctx["model"] = p(g, ctx)
        return ctx["model"]
    return patch


def _into_silhouette(*patches):
    """`patches` drawing into the exact mask's silhouette, as the workflows' `silhouette` does: on
    workflows.drawing_region (the mask grown by half a latent cell), the paste from the exact mask's own edge."""
    def patch(g, ctx):
        exact = ctx["mask"]
        ctx["mask"] = workflows.drawing_region(g, exact)
        model = _chain(*patches)(g, ctx)
        ctx["mask"] = ctx["paste_mask"] = exact
        ctx["paste"] = workflows.EDGE_PASTE
        return model
    return patch


def _plug_and_play(g, ctx):
    """Source Attention Injection, query+key (the source's layout), over FlowEdit's whole window in its paper's
    layers: the flowedit_keep_mask (recolour) workflows' setting."""
    return g.add("AttentionEditSourceInjection", model=ctx["model"], mode="query+key (Plug-and-Play)", start_step=0,
                 end_step=FLOWEDIT_MASKED["n_max"], layers="paper default", layer_fraction=0.0)[0]


def region_methods(cell_threshold=None, **settings):
    """Region Prompt + Keep Outside Mask (cell_threshold: the workflows' by default) + paste-back, exact mask, in
    the Edit Sampler and in FlowEdit (the flowedit_region_mask workflows); and the recolour workflows' pipeline:
    the same with Plug-and-Play, into the mask's silhouette (flowedit_keep_mask)."""
    threshold = workflows.REGION_PROMPT_CELL_THRESHOLD if cell_threshold is None else cell_threshold
    both = _chain(_region(**settings), _keep(paste=True, cell_threshold=threshold))
    recolour = _into_silhouette(_plug_and_play, _region(**settings), _keep(paste=True, cell_threshold=threshold))
    return {"region_keep_exact_mask_paste": lambda d, c, i, s: _graph(d, c, i, s, patch=both),
            "flowedit_region_keep_exact_mask_paste": _flowedit(both, **FLOWEDIT_MASKED),
            "flowedit_recolour_exact_mask_paste": _flowedit(recolour, **FLOWEDIT_MASKED)}


METHODS.update(region_methods())


def _add_alignment(g, ctx):
    return workflows.add_alignment(g, ctx, ctx["model"], ctx["mask"])


def _region_add():
    """The region_add_mask workflows, pasted from the mask's edge: on the U-Net Region Prompt + cross-attention
    alignment to the mask + Keep Outside Mask in the Edit Sampler; on Flux the Region Prompt FlowEdit; both on the
    mask grown by half a latent cell."""
    keep = _keep(paste=True, cell_threshold=workflows.REGION_PROMPT_CELL_THRESHOLD)
    unet = lambda d, c, i, s: _graph(d, c, i, s, patch=_into_silhouette(_region(), _add_alignment, keep))
    flux = _flowedit(_into_silhouette(_region(), keep), **FLOWEDIT_MASKED)
    return lambda d, c, i, s: (unet if d == "unet" else flux)(d, c, i, s)


METHODS["region_add_exact_mask_paste"] = _region_add()


def supports(method, denoiser):
    """False for a method that exists for one denoiser family only."""
    return method not in (UNET_ONLY if denoiser == "flux" else FLUX_ONLY)


def build(method, denoiser, case, image_name, steps):
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}")
    return METHODS[method](denoiser, case, image_name, steps)
