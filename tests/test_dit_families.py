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
