"""The README's support matrix (family x technique: works / refused) against what the nodes do.

Every cell runs through ComfyUI's real executor on a tiny random model built from ComfyUI's own class for the
family: "works" means the graph runs and the technique acts (its output differs from the same graph without it,
or, for Invert / Edit Sampler / FlowEdit / Edit Mask From Attention, a non-trivial result); "refused" means a clear
error naming the family. Add a family by adding a row to FAMILIES (and to the README's table).
"""
import functools
import itertools
import re
from pathlib import Path

import pytest
import torch
from graphs import tiny_inputs

README = Path(__file__).resolve().parent.parent / "README.md"

# README row -> (fixture kind in tests/fixture_nodes, the family's name in the pack's messages)
FAMILIES = {
    "SD1.x / SD2.x": ("sd15", "U-Net"),
    "SDXL": ("sdxl", "U-Net"),
    "FLUX.1": ("flux", "FLUX.1"),
    "FLUX.1 Kontext": ("flux_kontext", "FLUX.1"),
    "FLUX.2": ("flux2", "FLUX.2"),
    "Chroma": ("chroma", "Chroma"),
    "SD3 / SD3.5": ("sd3", "SD3"),
    "Qwen-Image": ("qwen_image", "Qwen-Image"),
    "Lumina 2": ("lumina2", "Lumina 2"),
    "Z-Image": ("z_image", "Z-Image"),
    "Chroma Radiance": ("chroma_radiance", "Chroma Radiance"),
    "HiDream": ("hidream", "HiDream"),
    "HunyuanImage 2.1": ("hunyuan_image21", "HunyuanImage 2.1"),
    "Wan": ("wan21", "Wan"),
}
STEPS = 2
MASK = "mask"  # node id of a left-half mask (SolidMask + MaskComposite, ComfyUI's own nodes)


def half_mask():
    return {
        "m0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "m1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 128}},
        MASK: {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0], "x": 0,
                                                          "y": 0, "operation": "add"}},
    }


def base(kind):
    """Tiny model, source / target / empty prompts, a random source latent (node 5), the half mask."""
    prompt = {**tiny_inputs(kind, "a red cat on grass", "a blue cat on grass"), **half_mask()}
    prompt["5"] = {"class_type": "TinyTestLatent", "inputs": {"size": 16, "seed": 3, "batch_size": 1}}
    return prompt


def invert(model="1", latent="5"):
    return {"inv": {"class_type": "AttentionEditInvert", "inputs": {
        "model": [model, 0], "latent": [latent, 0], "positive": ["2", 0], "steps": STEPS, "scheduler": "simple",
        "solver": "auto", "cfg": 1.0, "exact_iterations": 0}}}


def edit(model="1", inversion="inv", aux=False):
    extra = {"aux_positive": ["4", 0], "aux_cfg": 1.0} if aux else {}
    return {"out": {"class_type": "AttentionEditSampler", "inputs": {
        "model": [model, 0], "inversion": [inversion, 0], "target_positive": ["3", 0], "target_cfg": 2.0,
        "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["4", 0], **extra}}}


def patched(nodes, aux=False, inversion="inv"):
    """MODEL patch nodes (the last one's id is 'p') -> Invert (unpatched) -> Edit Sampler on the patched MODEL."""
    return {**nodes, **invert(), **edit("p", inversion, aux)}


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


# technique (README column) -> (graph nodes added to base(kind), what "acts" means)
#   "differs": node 'out' output 0 differs from the baseline graph (same aux setting) without the technique
#   "result": node 'out' output 0 is finite and not the source / all equal
TECHNIQUES = {
    "Invert": (invert, "noise"),
    "Edit Sampler": (lambda: invert() | edit(), "result"),
    "Uniform Attention": (lambda: patched({
        "u": node("AttentionEditUniformAttnPatch", model=["1", 0], branches="aux", during_inversion=False),
        "p": node("AttentionEditBlend", model=["u", 0], mode="adaptive", into="target", fill="aux", quantile=0.5,
                  threshold_scale=1.0, T_mask=1000, dilation=1)}, aux=True), "differs_aux"),
    "KV-Mix": (lambda: patched({"p": node("AttentionEditKVMix", model=["1", 0], delta=0.9, inject_steps=STEPS,
                                          edit_type="change", kv_source="batch", mask=[MASK, 0])}), "differs"),
    "Latents-Shift": (lambda: {**invert(), "shift": node("AttentionEditLatentsShift", inversion=["inv", 0],
                                                          mask=[MASK, 0], beta=0.5, seed=0), **edit("1", "shift")},
                      "differs"),
    "CPAM": (lambda: patched({
        "c": node("AttentionEditCPAMSelfAttention", model=["1", 0], source_mask=[MASK, 0], mode="change",
                  retain_object=False, step_threshold=3, layer_threshold=0, plain_fraction=0.0, seed=0,
                  target_mask_mode="source", mask_after_step=5, mask_threshold=0.3),
        "p": node("AttentionEditCPAMCrossAttention", model=["c", 0], source_mask=[MASK, 0], target_mask_mode="source",
                  mask_after_step=5, mask_threshold=0.3)}, aux=True), "differs_aux"),
    "Source Injection": (lambda: patched({"p": node("AttentionEditSourceInjection", model=["1", 0],
                                                    mode="key+value (MasaCtrl)", start_step=0, end_step=-1,
                                                    layers="all", layer_fraction=0.0)}), "differs"),
    "UnifyEdit": (lambda: patched({"p": node("AttentionEditSAPreserveOptimizer", model=["1", 0], edit_tokens="#3",
                                             gradient_mode="balanced", beta1=1.0, beta2=1.0, k1=8.0, k2=8.0,
                                             iterations=1, step_size=2.5, active_steps=1, sa_layers="all",
                                             ca_layers="all", attention_precision="float32")}), "differs"),
    "FlowEdit": (lambda: {"out": node("AttentionEditFlowEdit", model=["1", 0], latent=["5", 0],
                                      source_positive=["2", 0], target_positive=["3", 0], steps=STEPS + 1,
                                      scheduler="simple", n_max=STEPS, n_min=0, n_avg=1, source_cfg=1.0,
                                      target_cfg=2.0, seed=0, negative=["4", 0])}, "result"),
    "Keep Outside Mask": (lambda: patched({"p": node("AttentionEditKeepOutsideMask", model=["1", 0],
                                                     mask=[MASK, 0], start_step=0, end_step=-1, grow=0,
                                                     feather=0)}), "differs"),
    "Region Prompt": (lambda: patched({"clip": node("TinyTestWordClip"), "p": node(
        "AttentionEditRegionPrompt", model=["1", 0], clip=["clip", 0], mask=[MASK, 0], prompt="a blue cat on grass",
        words="blue cat", strength=20.0, self_strength=8.0, end_percent=1.0)}), "differs"),
    "Edit Mask From Attention": (lambda: {"clip": node("TinyTestWordClip"), "out": node(
        "AttentionEditMaskFromAttention", model=["1", 0], latent=["5", 0], positive=["2", 0], clip=["clip", 0],
        source_prompt="a red cat on grass", word="cat", dilation=0)}, "mask"),
}


def readme_matrix():
    """{family row: {technique column: cell}} from the README's support-matrix table."""
    text = README.read_text()
    lines = text.split("## Support matrix", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))  # the first table
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    header = cells[0][1:]
    return {r[0]: dict(zip(header, (re.sub(r"[^a-z]", "", c.lower()) for c in r[1:]))) for r in cells[2:]}


def test_readme_matrix_has_every_family_and_technique():
    matrix = readme_matrix()
    assert set(matrix) == set(FAMILIES)
    for family, row in matrix.items():
        assert set(row) == set(TECHNIQUES), family
        assert set(row.values()) <= {"works", "refused"}, family


@functools.lru_cache(maxsize=None)
def _baseline(kind, aux):
    from harness import runtime
    from conftest import with_sinks
    return runtime.run_prompt(with_sinks({**base(kind), **invert(), **edit(aux=aux)}))["out"][0]["samples"]


def _acts(check, kind, out, source):
    if check == "noise":
        noise = out["inv"][1]["samples"]
        return bool(noise.isfinite().all()) and not torch.allclose(noise, source, atol=1e-3)
    if check == "mask":  # at image size: latent x 8 (x 16 on FLUX.2, whose latent cell packs 2x2 VAE cells)
        mask = out["out"][0]
        size = 256 if kind == "flux2" else 128
        return tuple(mask.shape[-2:]) == (size, size) and 0 < float(mask.mean()) < 1
    result = out["out"][0]["samples"]
    if not result.isfinite().all():
        return False
    if check == "result":
        return not torch.allclose(result, source, atol=1e-3)
    return not torch.allclose(result, _baseline(kind, check == "differs_aux"), atol=1e-5)


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_support_matrix_cell(run, comfy, family, technique):
    kind, name = FAMILIES[family]
    expected = readme_matrix()[family][technique]
    nodes, check = TECHNIQUES[technique]
    prompt = {**base(kind), **nodes()}
    if expected == "refused":
        with pytest.raises(comfy.PromptError) as refusal:
            run(prompt)
        message = str(refusal.value)
        assert name in message, f"the refusal does not name the family: {message}"
        failed = refusal.value.details[0].get("node_type", "")
        assert failed.startswith("AttentionEdit"), f"refused by {failed}, not by the pack: {message}"
        return
    out = run(prompt)
    source = out["5"][0]["samples"]
    assert _acts(check, kind, out, source), f"{technique} ran on {family} but did not act"
