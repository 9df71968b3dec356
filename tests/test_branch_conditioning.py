"""Per-branch conditioning: each branch's prompt length, FLUX guidance, SDXL size conditioning, Kontext reference
latents and ControlNet reach its own rows as if it ran alone; options the sampler applies to whole model calls are
refused when they differ."""
import pytest
import torch

from test_inversion import source_latent
from test_preservation import ops  # noqa: F401  (the fixture)



def assert_close(actual, expected):
    """Equal up to float rounding: batch composition and the kernel change the last bits, ~2e-6 of the scale."""
    scale = max(expected.abs().max().item(), 1.0)
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


def differs(a, b):
    return (a - b).abs().max().item() > 1e-3 * max(b.abs().max().item(), 1.0)


def with_options(cond, **options):
    return [[cond[0][0], {**cond[0][1], **options}]]


@pytest.fixture(scope="module")
def att(pack):
    class Att:
        capture = pack("attention.capture")
        uniform = pack("attention.uniform")
        kv_mix = pack("attention.kv_mix")
        hooks = pack("attention.hooks")
        text_keys = pack("attention.text_keys")
    return Att


def edit_roles(ops, model, inv, conds, cfg=1.0, negative=None, roles=("source", "target")):
    out, run = ops.edit.edit(model, inv, [ops.edit.Branch(r, c, cfg) for r, c in zip(roles, conds)],
                             negative=negative, source_mode="reconstruct")
    return out, run


def alone(ops, model, inv, cond, cfg=1.0, negative=None):
    return edit_roles(ops, model, inv, [cond], cfg, negative, roles=("target",))[0]["target"]


# ----- prompts of any lengths ------------------------------------------------------------------------------------

FAMILIES = ["sd15", "sdxl", "flux", "flux2", "flux_kontext", "chroma", "sd3", "qwen_image", "lumina2"]
# Z-Image pads the caption itself to a multiple of 32 with a learned token it attends, and puts the image after it:
# no common length fits every row (docs/model_families.md); the pack picks one that fits the target's.
NOT_EXACT = ["z_image"]


@pytest.mark.parametrize("kind", NOT_EXACT)
def test_prompts_of_any_lengths_on_z_image_keep_the_target_exact(ops, fixtures, kind):
    model = fixtures.tiny_model(kind)
    short, long = (fixtures.tiny_conditioning("a red circle " * n, length=n) for n in (3, 45))
    inv = ops.inversion.invert(model, source_latent(22), short, steps=2)
    for source, target in ((short, long), (long, short)):
        both, run = edit_roles(ops, model, inv, [source, target])
        assert run.text_keys.padded and all(torch.isfinite(t).all() for t in both.values())
        assert run.text_keys.length % 32 == target[0][0].shape[1] % 32
        assert_close(both["target"], alone(ops, model, inv, target))


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_prompt_padded_from_5_to_300_tokens_computes_what_it_does_unpadded(ops, fixtures, kind):
    model = fixtures.tiny_model(kind)
    x0 = source_latent(22)[:, :, None] if kind == "qwen_image" else source_latent(22)
    cond = kind if kind == "flux_kontext" else ""
    short = fixtures.tiny_conditioning("a red circle on grey", cond, length=5)
    long = fixtures.tiny_conditioning("a blue square " * 100, cond, length=300)
    negative = fixtures.tiny_conditioning("blurry dark", cond, length=8)
    inv = ops.inversion.invert(model, x0, short, steps=2)
    both, run = edit_roles(ops, model, inv, [short, long], 2.0, negative)
    # Flux.2 pads every prompt to 512 itself (kept where it puts it): nothing left for the pack to pad
    assert run.text_keys.padded != (kind == "flux2") and run.text_keys.length == (512 if kind == "flux2" else 300)
    assert_close(both["source"], alone(ops, model, inv, short, 2.0, negative))
    assert_close(both["target"], alone(ops, model, inv, long, 2.0, negative))
    if kind != "flux2":  # the zeros would change the result if they were attended: the mask makes the two equal
        zeros = fixtures.tiny_conditioning("a red circle on grey", cond, length=300)
        assert differs(alone(ops, model, inv, zeros, 2.0, negative), both["source"])


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_another_nodes_attention_kernel_gets_the_padding_as_its_mask(ops, fixtures, kind):
    masks = []

    def damped_attention(func, *args, **kwargs):
        """Another node's attention kernel (as sage-attention patch nodes set), with a visible effect."""
        masks.append(kwargs.get("mask"))
        return func(*args, **kwargs) * 0.9
    model = fixtures.tiny_model(kind).clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = damped_attention
    x0 = source_latent(29)
    short = fixtures.tiny_conditioning("a red circle on grey", length=5)
    long = fixtures.tiny_conditioning("a blue square " * 20, length=60)
    inv = ops.inversion.invert(model, x0, short, steps=2)
    solo = alone(ops, model, inv, short)
    masks.clear()
    both, _ = edit_roles(ops, model, inv, [short, long])
    assert any(m is not None for m in masks)  # the kernel ran, given the padding as its mask
    assert_close(both["source"], solo)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_attention_maps_and_techniques_ignore_the_padding(ops, fixtures, att, kind):
    """KV-mix and uniform maps on the target, and captured maps, are the same whether or not another branch's long
    prompt pads the source and target prompts."""
    model = fixtures.tiny_model(kind)
    x0 = source_latent(23)
    src, tgt = (fixtures.tiny_conditioning(t, length=5) for t in ("a red circle", "a blue circle"))
    aux_short = fixtures.tiny_conditioning("grey", length=5)
    aux_long = fixtures.tiny_conditioning("grey " * 120, length=120)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    patched = att.hooks.with_controller(model, att.uniform.UniformAttention("target", during_inversion=False))
    patched = att.hooks.with_controller(patched, att.kv_mix.KVMix(mask, delta=0.5, inject=2, source="batch"))
    patched = att.hooks.with_controller(patched, att.capture.AttentionCapture("maps", phases=("edit",)))
    inv = ops.inversion.invert(model, x0, src, steps=2)
    roles = ("source", "target", "aux")
    short, run_short = edit_roles(ops, patched, inv, [src, tgt, aux_short], roles=roles)
    long, run_long = edit_roles(ops, patched, inv, [src, tgt, aux_long], roles=roles)
    assert run_long.text_keys.padded and not run_short.text_keys.padded
    for role in ("source", "target"):
        assert_close(long[role], short[role])
    plain, _ = edit_roles(ops, model, inv, [src, tgt, aux_short], roles=roles)
    assert differs(plain["target"], short["target"])  # the techniques act
    maps_short = att.capture.captured_maps(run_short, "maps")
    maps_long = att.capture.captured_maps(run_long, "maps")
    assert maps_long.shape[1] == 120
    assert_close(maps_long[:2, :5], maps_short[:2, :5])  # source and target rows
    assert maps_long[:2, 5:].abs().max() == 0  # no attention to the zeros that pad them


def test_cpam_localized_cross_attention_ignores_the_padding(ops, fixtures, pack):
    """The target's queries outside M_t attend to the aux (empty) prompt's text keys, inside to the target's: with
    an empty prompt of 40 tokens the target's 8 are padded, and only their padding is masked (the U-Net's K/V of
    the empty prompt's zero states are zeros at any count, so the result must not change)."""
    cpam = pack("nodes.cpam")
    model = fixtures.tiny_model("sd15")
    x0 = source_latent(27)
    src, tgt = fixtures.tiny_conditioning("a red circle"), fixtures.tiny_conditioning("a blue square")
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1
    patched = cpam.CPAMLocalizedCrossAttention().patch(model, half, "given", 0, 0.3, target_mask=half)[0]
    inv = ops.inversion.invert(model, x0, src, steps=2)
    roles = ("source", "target", "aux")
    short, _ = edit_roles(ops, patched, inv, [src, tgt, fixtures.tiny_conditioning("")], roles=roles)
    long, run = edit_roles(ops, patched, inv, [src, tgt, fixtures.tiny_conditioning("", length=40)], roles=roles)
    assert run.text_keys.padded
    plain, _ = edit_roles(ops, model, inv, [src, tgt, fixtures.tiny_conditioning("")], roles=roles)
    assert differs(short["target"], plain["target"])  # CPAM acts
    assert_close(long["target"], short["target"])


def left_padding_flux(fixtures, seed=0):
    """The tiny Flux model under ComfyUI's Flux2 model class, whose extra_conds left-pads the text to 512 tokens,
    with Flux.2's four position axes (text keys then have positions: the model's own padding must stay where the
    model puts it)."""
    import comfy.model_base
    arch = fixtures.architectures
    config = dict(fixtures.tiny_config("flux"), dtype=torch.float32, axes_dim=[4, 4, 4, 4])
    return arch._patcher(comfy.model_base.Flux2(arch.SmallModelConfig(config, 1.0, 0.0, {"shift": 1.0})), None, seed)


def test_a_model_that_left_pads_the_text_keeps_its_padding_and_shifts_word_positions(ops, fixtures, pack, att):
    conditioning = pack("latent_ops.conditioning")
    model = left_padding_flux(fixtures)
    x0 = source_latent(28)
    short = fixtures.tiny_conditioning("a red circle on grey", length=5)
    long = fixtures.tiny_conditioning("a blue square " * 200, length=600)  # beyond the model's 512
    laid_out, keys = conditioning.text_layout(model, short, "source")
    assert laid_out[0][0].shape[1] == 512 and keys.columns([0, 3], "source") == [507, 510]
    assert att.text_keys.word_columns(None, [0, 3]) == [0, 3]
    inv = ops.inversion.invert(model, x0, short, steps=2)
    both, run = edit_roles(ops, model, inv, [short, long])
    assert run.text_keys.length == 600 and run.text_keys.span("source", True) == (0, 512)
    assert run.text_keys.columns([0], "source") == [507] and run.text_keys.columns([0]) == [0]
    assert_close(both["source"], alone(ops, model, inv, short))
    assert_close(both["target"], alone(ops, model, inv, long))


def test_an_encoders_own_token_mask_is_padded_alike(pack):
    pad_options = pack("latent_ops.conditioning")._pad_options
    opts = {"attention_mask": torch.ones(1, 3), "guidance": 2.0}
    padded = pad_options(opts, 3, 5)
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0]] and padded["guidance"] == 2.0
    assert opts["attention_mask"].shape == (1, 3)  # the input is left as it was


def test_text_keys_mask_only_the_padding_the_pack_added(att):
    keys = att.text_keys.TextKeys(7, {("target", True): (0, 0, 5), ("source", True): (2, 0, 7),
                                      ("aux", True): (3, 2, 7)})
    assert keys.columns([0, 4]) == [0, 4] and keys.columns([0, 4], "source") == [2, 6]
    assert keys.span("target", True) == (0, 5) and keys.span("aux", False) == (0, 7)
    # keys: 3 the model puts first inside its forward (SD3's registers), the 7 conditioning tokens, then the rest
    keep = keys.keep(["target", "source", "aux"], [True, True, True], 3, 20, "cpu")
    assert keep[0, :8].all() and not keep[0, 8:10].any() and keep[0, 10:].all() and keep[1].all()
    assert keep[2, :3].all() and not keep[2, 3:5].any() and keep[2, 5:].all()  # padded on the left


# ----- per-branch options ----------------------------------------------------------------------------------------

def test_each_branch_runs_at_its_own_flux_guidance(ops, fixtures):
    model = fixtures.tiny_model("flux")
    x0 = source_latent(20)
    text = fixtures.tiny_conditioning("a red circle")
    low, high = with_options(text, guidance=1.0), with_options(text, guidance=4.0)
    inv = ops.inversion.invert(model, x0, low, steps=3)
    by_guidance = {g: alone(ops, model, inv, c) for g, c in ((1.0, low), (4.0, high))}
    assert not torch.allclose(by_guidance[1.0], by_guidance[4.0], atol=1e-4)  # the guidance input matters
    both, _ = edit_roles(ops, model, inv, [low, high])
    assert_close(both["source"], by_guidance[1.0])
    assert_close(both["target"], by_guidance[4.0])
    # a branch without FluxGuidance runs at the model's default, as it would alone
    both, _ = edit_roles(ops, model, inv, [text, high])
    assert_close(both["source"], alone(ops, model, inv, text))
    # FlowEdit: the source branch at 1, the target at 4 (a target = source edit then moves, at equal guidance not)
    same, _ = ops.flowedit.flow_edit(model, x0, low, low, steps=4, n_max=3, source_cfg=1.0, target_cfg=1.0)
    assert_close(same["target"], x0)
    moved, _ = ops.flowedit.flow_edit(model, x0, low, high, steps=4, n_max=3, source_cfg=1.0, target_cfg=1.0)
    assert (moved["target"] - x0).abs().mean() > 1e-4


def test_each_branch_keeps_its_own_sdxl_size_conditioning(ops, fixtures):
    model = fixtures.tiny_model("sdxl")
    x0 = source_latent(24)
    text = fixtures.tiny_conditioning("a red circle")
    small = with_options(text, width=512, height=512, target_width=512, target_height=512)
    large = with_options(text, width=2048, height=1024, crop_w=64, target_width=2048, target_height=1024)
    inv = ops.inversion.invert(model, x0, text, steps=2)
    solo = {n: alone(ops, model, inv, c, 2.0, text) for n, c in (("small", small), ("large", large))}
    assert differs(solo["small"], solo["large"])
    both, _ = edit_roles(ops, model, inv, [small, large], 2.0, text)
    assert_close(both["source"], solo["small"])
    assert_close(both["target"], solo["large"])


def test_each_branch_keeps_its_own_reference_latents(ops, fixtures):
    model = fixtures.tiny_model("flux")
    x0 = source_latent(25)
    text = fixtures.tiny_conditioning("a red circle")
    refs = [torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    first, second = (with_options(text, reference_latents=[r]) for r in refs)
    inv = ops.inversion.invert(model, x0, text, steps=2)
    solo = [alone(ops, model, inv, c) for c in (first, second)]
    assert differs(solo[0], solo[1])
    both, _ = edit_roles(ops, model, inv, [first, second])
    assert_close(both["source"], solo[0])
    assert_close(both["target"], solo[1])
    with pytest.raises(ValueError, match="source conditioning: the model input 'ref_latents' comes from options "
                                         "that only some branches have"):
        edit_roles(ops, model, inv, [text, second])
    bigger = with_options(text, reference_latents=[torch.zeros(1, 4, 8, 8)])
    with pytest.raises(ValueError, match="target conditioning: its model input 'ref_latents' has shape"):
        edit_roles(ops, model, inv, [first, bigger])


def tiny_controlnet(fixtures, seed=3):
    """A random ControlNet built from ComfyUI's own classes for the tiny SD1.5 U-Net, explicitly initialised."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    config = dict(fixtures.tiny_config("sd15"), hint_channels=3)
    net = comfy.cldm.cldm.ControlNet(**config, device="cpu")
    fixtures.architectures.init_weights_(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device())


def test_a_controlnet_on_the_target_only(ops, fixtures, att):
    import nodes
    model = fixtures.tiny_model("sd15")
    x0 = source_latent(26)
    src, tgt = fixtures.tiny_conditioning("a red circle"), fixtures.tiny_conditioning("a blue circle", length=12)
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(4))
    controlled, _ = nodes.ControlNetApplyAdvanced().apply_controlnet(tgt, src, tiny_controlnet(fixtures), hint,
                                                                     1.0, 0.0, 1.0)
    inv = ops.inversion.invert(model, x0, src, steps=2)
    base, _ = edit_roles(ops, model, inv, [src, tgt])
    with_cn, _ = edit_roles(ops, model, inv, [src, controlled])
    assert differs(with_cn["target"], base["target"])  # the ControlNet acts on the target
    assert torch.equal(with_cn["source"], base["source"])  # and not on the source
    # the target's rows get what ComfyUI's own path gives the target alone (its prompt padded to 12 tokens)
    assert_close(with_cn["target"], alone(ops, model, inv, controlled))
    mixed = att.hooks.with_controller(model, att.kv_mix.KVMix(None, delta=0.3, inject=2, edit_type="style"))
    both, _ = edit_roles(ops, mixed, inv, [src, controlled])
    assert differs(both["target"], with_cn["target"])  # KV-mix still acts
    assert torch.equal(both["source"], base["source"])


def test_options_applied_to_whole_model_calls_are_refused(ops, fixtures):
    model = fixtures.tiny_model("flux")
    x0 = source_latent(21)
    text = fixtures.tiny_conditioning("a red circle")
    inv = ops.inversion.invert(model, x0, text, steps=2)
    with pytest.raises(ValueError, match="target conditioning: its 'area' option differs from the source "
                                         "conditioning's"):
        edit_roles(ops, model, inv, [text, with_options(text, area=(8, 8, 0, 0))])
    same = with_options(text, start_percent=0.0, end_percent=1.0)
    assert edit_roles(ops, model, inv, [same, same])[0]["target"].shape == x0.shape  # the same on every branch
