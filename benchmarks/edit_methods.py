"""The benchmark's methods as graphs of the pack's nodes on the embedded models.

build(method, denoiser, case, image_name, steps) -> (API prompt, node id of the edited IMAGE, node id of the
reconstruction IMAGE or None). Baselines: plain inversion + target prompt, and source-prompt reconstruction.
"""
from graph import Graph

CFG = {"unet": 4.0, "flux": 3.0}


def _common(g, denoiser, case, image_name):
    m = g.add("LoadEmbeddedEditModel", denoiser=denoiser)
    image = g.add("LoadImage", image=image_name)
    latent = g.add("VAEEncode", pixels=image[0], vae=m[2])
    src = g.add("CLIPTextEncode", text=case.source_prompt, clip=m[1])
    tgt = g.add("CLIPTextEncode", text=case.target_prompt, clip=m[1])
    empty = g.add("CLIPTextEncode", text="", clip=m[1])
    return m, image, latent, src, tgt, empty


def _edit(g, m, model, inv, tgt, empty, denoiser, source_mode="replay", aux=None):
    extra = {"aux_positive": aux[0], "aux_cfg": 1.0} if aux is not None else {}
    edit = g.add("AttentionEditSampler", model=model, inversion=inv[0], target_positive=tgt[0],
                 target_cfg=CFG[denoiser], source_mode=source_mode, source_cfg=1.0, start_step=0,
                 negative=empty[0], **extra)
    edited = g.add("VAEDecode", samples=edit[0], vae=m[2])
    source = g.add("VAEDecode", samples=edit[1], vae=m[2])
    return edited, source


def _invert(g, model, latent, cond, steps):
    return g.add("AttentionEditInvert", model=model, latent=latent[0], positive=cond[0], steps=steps,
                 scheduler="simple", solver="auto", cfg=1.0)


def target_prompt(denoiser, case, image_name, steps):
    """Baseline: invert with the source prompt, regenerate with the target prompt."""
    g = Graph()
    m, _, latent, src, tgt, empty = _common(g, denoiser, case, image_name)
    inv = _invert(g, m[0], latent, src, steps)
    edited, recon = _edit(g, m, m[0], inv, tgt, empty, denoiser, source_mode="reconstruct")
    return g.prompt, edited.id, recon.id


def reconstruction(denoiser, case, image_name, steps):
    """Baseline: invert and regenerate with the source prompt (what 'no edit' looks like)."""
    g = Graph()
    m, _, latent, src, _, empty = _common(g, denoiser, case, image_name)
    inv = _invert(g, m[0], latent, src, steps)
    edited, recon = _edit(g, m, m[0], inv, src, empty, denoiser, source_mode="reconstruct")
    return g.prompt, edited.id, recon.id


METHODS = {"target_prompt": target_prompt, "reconstruction": reconstruction}


def build(method, denoiser, case, image_name, steps):
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}")
    return METHODS[method](denoiser, case, image_name, steps)
