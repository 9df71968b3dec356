"""SD3 / SD3.5 (MMDiT), Qwen-Image and Lumina 2 / Z-Image (NextDiT): tiny random models built from ComfyUI's own
classes sample, invert and edit, the hooks see their joint layers with the right token layout (and pass the
text-only / image-only refiner and dual attention calls through), and every technique acts or refuses clearly."""
import pytest
import torch

from gaussian import gaussian_model
from graphs import tiny_inputs
from sampling import ksample
from test_attention_core import Recorder

FAMILIES = ["sd3", "qwen_image", "lumina2", "z_image"]
# Joint layers and pass-through calls of each tiny fixture, in forward order
LAYERS = {
    "sd3": ("double.0", "double.1", "double.2"),
    "qwen_image": ("double.0", "double.1"),
    "lumina2": ("single.0", "single.1"),
    "z_image": ("single.0", "single.1"),
}
PASSED_THROUGH = {"sd3": ("double.0.attn2",), "qwen_image": (), "lumina2": ("context_refiner.0", "noise_refiner.0"),
                  "z_image": ("context_refiner.0", "noise_refiner.0")}


@pytest.fixture(scope="module")
def fam(pack):
    class Fam:
        hooks = pack("attention.hooks")
        families = pack("attention.dit_families")
        controller = pack("attention.controller")
        shapes = pack("attention.layer_shapes")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
    return Fam


def latent_for(kind, batch=1, size=16, seed=0):
    """A test latent in the layout the family's model takes (Qwen-Image: [B, C, 1, H, W])."""
    x = 0.3 + 0.7 * torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))
    return x[:, :, None] if kind == "qwen_image" else x


def conds(fixtures, text="a red circle"):
    return fixtures.tiny_conditioning(text), fixtures.tiny_conditioning("")


@pytest.mark.parametrize("kind", FAMILIES)
def test_ksampler_graph_runs(run, kind):
    prompt = {**tiny_inputs(kind), "6": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 1,
        "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}}
    samples = run(prompt)["6"][0]["samples"]
    assert samples.shape[-2:] == (16, 16) and samples.isfinite().all() and samples.abs().sum() > 0


@pytest.mark.parametrize("kind", FAMILIES)
def test_hooks_see_the_joint_layers_with_their_token_layout(fam, fixtures, kind):
    model = fixtures.tiny_model(kind)
    assert fam.hooks.model_family(model) == "dit"
    assert fam.hooks.self_attention_layers(model) == LAYERS[kind]
    pos, neg = conds(fixtures)
    x = latent_for(kind, size=14)  # 7 x 7 tokens: odd grid, Z-Image pads the image tokens to 64
    plain = ksample(model, pos, neg, x, steps=2)
    log = []
    hooked = ksample(fam.hooks.with_controller(model, Recorder(log)), pos, neg, x, steps=2)
    assert torch.equal(plain, hooked)  # a pass-through chain changes nothing
    calls = [e for e in log if e[0] == "before"]
    assert calls and all(e[3] == "joint" for e in calls)
    assert tuple(dict.fromkeys(e[2] for e in calls)) == LAYERS[kind]  # refiners / dual attention not seen
    for e in calls:
        q_shape, grid, img, txt = e[4], e[6], e[7], e[8]
        assert grid == (7, 7) and img.stop - img.start == 49
        text = 8 if kind != "z_image" else 32  # Z-Image pads the caption to a multiple of 32
        assert txt == slice(0, text) and img.start == text
        assert q_shape[2] >= img.stop
    shapes = fam.shapes.self_attention_shapes(model, (14, 14))
    assert set(shapes) == set(LAYERS[kind]) and all(t == 49 for t, _ in shapes.values())


@pytest.mark.parametrize("kind", FAMILIES)
def test_target_with_source_prompt_reconstructs_the_source(fam, fixtures, kind):
    x0, (pos, _) = latent_for(kind, seed=3), conds(fixtures, "a green circle")
    model = gaussian_model(fixtures.tiny_model(kind), flow=True)
    inv = fam.inversion.invert(model, x0, pos, steps=30, solver="rf_solver")
    out, _ = fam.edit.edit(model, inv, [fam.edit.Branch("source", pos, 1.0), fam.edit.Branch("target", pos, 1.0)],
                           source_mode="reconstruct")
    assert torch.equal(out["target"], out["source"])
    assert (out["target"] - x0).abs().mean() < 0.01
    # on the random network, through a pass-through chain, the target with the source prompt is the source
    net = fam.hooks.with_controller(fixtures.tiny_model(kind), Recorder([]))
    inv = fam.inversion.invert(net, x0, pos, steps=3)
    out, _ = fam.edit.edit(net, inv, [fam.edit.Branch("source", pos, 1.0), fam.edit.Branch("target", pos, 1.0)],
                           source_mode="reconstruct")
    torch.testing.assert_close(out["target"], out["source"])


# ----- every technique, as ComfyUI graphs -----------------------------------------------------------------------

def half_mask_nodes():
    """Node "m": a 128 x 128 MASK, 1 on its left half (ComfyUI's own mask nodes)."""
    return {
        "m0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "m1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 128}},
        "m": {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0], "x": 0, "y": 0,
                                                        "operation": "add"}},
    }


MASK = ["m", 0]
MODEL_PATCHES = {  # technique -> (node class, its inputs besides the model)
    "uniform attention": ("AttentionEditUniformAttnPatch", {"branches": "aux", "during_inversion": True}),
    "kv-mix": ("AttentionEditKVMix", {"delta": 0.5, "inject_steps": 3, "edit_type": "change", "kv_source": "batch",
                                      "mask": MASK}),
    "cpam self-attention": ("AttentionEditCPAMSelfAttention", {
        "source_mask": MASK, "mode": "change", "retain_object": False, "step_threshold": 1, "layer_threshold": 0,
        "plain_fraction": 0.0, "seed": 0, "target_mask_mode": "source", "mask_after_step": 5, "mask_threshold": 0.3}),
    "cpam cross-attention": ("AttentionEditCPAMCrossAttention", {
        "source_mask": MASK, "target_mask_mode": "source", "mask_after_step": 5, "mask_threshold": 0.3}),
    "source injection key+value": ("AttentionEditSourceInjection", {
        "mode": "key+value (MasaCtrl)", "start_step": -1, "end_step": -1, "layers": "paper default",
        "layer_fraction": 0.0}),
    "source injection value": ("AttentionEditSourceInjection", {
        "mode": "value (RF-Solver-Edit)", "start_step": -1, "end_step": -1, "layers": "paper default",
        "layer_fraction": 0.0}),
    "keep outside mask": ("AttentionEditKeepOutsideMask", {"mask": MASK, "start_step": 0, "end_step": -1, "grow": 0,
                                                           "feather": 0}),
}


def edit_graph(kind, patch=None, shift=False, steps=3):
    """Invert (node 6) and the Edit Sampler (node 7: source replay, target, aux = empty prompt), with a technique
    node "p" on the model and / or Latents-Shift on the inversion."""
    model, inversion = ["1", 0], ["6", 0]
    prompt = {**tiny_inputs(kind), **half_mask_nodes(),
              "6": {"class_type": "AttentionEditInvert", "inputs": {
                  "model": model, "latent": ["5", 0], "positive": ["2", 0], "steps": steps, "scheduler": "simple",
                  "solver": "auto", "cfg": 1.0}}}
    if patch is not None:
        cls, inputs = MODEL_PATCHES[patch]
        prompt["p"] = {"class_type": cls, "inputs": {"model": ["1", 0], **inputs}}
        model = prompt["6"]["inputs"]["model"] = ["p", 0]
    if shift:
        prompt["s"] = {"class_type": "AttentionEditLatentsShift", "inputs": {"inversion": inversion, "mask": MASK,
                                                                            "beta": 0.5, "seed": 0}}
        inversion = ["s", 0]
    prompt["7"] = {"class_type": "AttentionEditSampler", "inputs": {
        "model": model, "inversion": inversion, "target_positive": ["3", 0], "target_cfg": 2.0,
        "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["4", 0],
        "aux_positive": ["4", 0], "aux_cfg": 1.0}}
    return prompt


@pytest.fixture(scope="module")
def plain_edits(comfy):
    return {}


def edited(run, prompt):
    return run(prompt)["7"][0]["samples"]


def plain_edit(run, plain_edits, kind):
    if kind not in plain_edits:
        plain_edits[kind] = edited(run, edit_graph(kind))
    return plain_edits[kind]


@pytest.mark.parametrize("technique", list(MODEL_PATCHES) + ["latents shift"])
@pytest.mark.parametrize("kind", FAMILIES)
def test_each_technique_acts(run, plain_edits, kind, technique):
    plain = plain_edit(run, plain_edits, kind)
    if technique == "latents shift":
        out = edited(run, edit_graph(kind, shift=True))
    else:
        out = edited(run, edit_graph(kind, patch=technique))
    assert out.shape == plain.shape and out.isfinite().all()
    assert (out - plain).abs().max() > 1e-4, f"{technique} left the {kind} edit unchanged"


@pytest.mark.parametrize("kind", FAMILIES)
def test_flowedit_graph_runs(run, kind):
    prompt = {**tiny_inputs(kind), "8": {"class_type": "AttentionEditFlowEdit", "inputs": {
        "model": ["1", 0], "latent": ["5", 0], "source_positive": ["2", 0], "target_positive": ["3", 0], "steps": 4,
        "scheduler": "simple", "n_max": 3, "n_min": 0, "n_avg": 1, "source_cfg": 1.5, "target_cfg": 3.0,
        "seed": 0, "negative": ["4", 0]}}}
    out = run(prompt)["8"][0]["samples"]
    assert out.shape[-2:] == (16, 16) and out.isfinite().all() and out.abs().sum() > 0


@pytest.mark.parametrize("solver", ["euler", "rf_solver", "fireflow"])
@pytest.mark.parametrize("kind", FAMILIES)
def test_flow_solvers_round_trip(fam, fixtures, kind, solver):
    x0, (pos, _) = latent_for(kind, seed=4), conds(fixtures, "a green circle")
    model = gaussian_model(fixtures.tiny_model(kind), flow=True)
    errors = []
    for steps in (4, 24):
        inv = fam.inversion.invert(model, x0, pos, steps=steps, solver=solver)
        out, _ = fam.edit.edit(model, inv, [fam.edit.Branch("target", pos, 1.0)])
        errors.append((out["target"] - x0).abs().mean().item())
    assert errors[1] < errors[0] or errors[1] < 1e-3, errors  # converges (second-order: at the float floor)


class FakeClip:
    """One token per word, no start token: positions match fixtures.tiny_conditioning."""

    def tokenize(self, text, return_word_ids=False):
        return {"only": [[(hash(w) % 50000, 1.0, i + 1) for i, w in enumerate(text.lower().split())]]}


@pytest.mark.parametrize("kind", FAMILIES)
def test_edit_mask_from_attention(pack, fixtures, kind):
    node = pack("nodes.proedit").EditMaskFromAttention()
    prompt = "a red cat on grass"
    latent = {"samples": latent_for(kind, batch=2)}
    for layers in ("all double blocks", "last double block"):
        mask, over = node.extract(fixtures.tiny_model(kind), latent, fixtures.tiny_conditioning(prompt), FakeClip(),
                                  prompt, "cat", 1, torch.rand(2, 128, 128, 3), dit_layers=layers)
        assert mask.shape == (2, 128, 128) and over.shape == (2, 128, 128, 3)
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() < 1


@pytest.mark.parametrize("kind", FAMILIES)
def test_unifyedit_is_refused_naming_the_family(pack, fixtures, kind):
    node = pack("nodes.unifyedit").SAPreserveOptimizer()
    label = {"sd3": "SD3", "qwen_image": "Qwen-Image", "lumina2": "Lumina 2", "z_image": "Lumina 2"}[kind]
    with pytest.raises(ValueError, match=rf"SA-Preserve Optimizer \(UnifyEdit\) does not apply to {label}"):
        node.patch(fixtures.tiny_model(kind), "#1", "balanced", 1, 1, 3, 3, 1, 2.5, 2, "1/2", "1/2", "float32")


class DampValues:
    """Another node's optimized_attention_override (written for this test): values scaled by 0.9, calls counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, func, q, k, v, *args, **kwargs):
        self.calls += 1
        return func(q, k, v * 0.9, *args, **kwargs)

    def __deepcopy__(self, memo):
        return self


class SharpenKeys:
    kinds = ("joint",)

    def wants(self, call):
        return call.kind in self.kinds

    def before(self, call):
        call.set_qkv(k=call.k * 1.5)

    def after(self, call, out):
        return out

    def __deepcopy__(self, memo):
        return self


@pytest.mark.parametrize("order", ["pack first", "other first"])
@pytest.mark.parametrize("kind", FAMILIES)
def test_hooks_coexist_with_another_attention_override(fam, fixtures, kind, order):
    model = fixtures.tiny_model(kind)
    pos, neg = conds(fixtures)
    x = latent_for(kind)

    def other(m):
        m = m.clone()
        m.model_options["transformer_options"]["optimized_attention_override"] = damp
        return m
    damp = DampValues()
    alone = ksample(other(model), pos, neg, x, steps=2)
    calls_alone, damp.calls = damp.calls, 0
    pack_only = ksample(fam.hooks.with_controller(model, SharpenKeys()), pos, neg, x, steps=2)
    both_model = (other(fam.hooks.with_controller(model, SharpenKeys())) if order == "pack first"
                  else fam.hooks.with_controller(other(model), SharpenKeys()))
    both = ksample(both_model, pos, neg, x, steps=2)
    assert damp.calls == calls_alone > 0  # every attention call (refiners, dual attention too) still reaches it
    assert not torch.allclose(both, alone, atol=1e-5) and not torch.allclose(both, pack_only, atol=1e-5)
