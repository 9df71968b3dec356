"""CPAM: preservation adaptation, localized extraction, removal, mask strategies, nodes end to end."""
import pytest
import torch

GRID = (4, 4)
N = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def cp(pack):
    class CP:
        cpam = pack("attention.cpam")
        masks = pack("latent_ops.cpam_masks")
        mask_ops = pack("latent_ops.masks")
        context = pack("attention.context")
        controller = pack("attention.controller")
        run_state = pack("attention.run_state")
        edit = pack("latent_ops.edit")
        inversion = pack("latent_ops.inversion")
        hooks = pack("attention.hooks")
        nodes = pack("nodes.cpam")
    return CP


def make_call(cp, kind="self", roles=("source", "target"), conds=None, step=5, layer="l0", txt=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(roles)
    n_keys = {"self": N, "cross": txt, "joint": txt + N}[kind]
    n_q = N + (txt if kind == "joint" else 0)
    q = torch.randn(b, 2, n_q, 8, generator=g)
    k = torch.randn(b, 2, n_keys, 8, generator=g)
    v = torch.randn(b, 2, n_keys, 8, generator=g)
    img = slice(txt, txt + N) if kind == "joint" else slice(0, N)
    txt_slice = slice(0, txt) if kind in ("cross", "joint") else None
    run = cp.run_state.RunState(branches=tuple(dict.fromkeys(roles)), phase="edit", total_steps=10)
    return cp.context.AttnCall(q, k, v, kind, layer, img, txt_slice, GRID, (8, 8), step, 1.0, list(roles),
                               list(conds or [True] * b), run)


def apply(cp, controller, call):
    def plain(c):
        return c.attend()
    return cp.controller.run_chain((controller,), call, plain)


def explicit(q, k, v, keep=None):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    p = logits.softmax(-1)
    return p @ v, p


def block_mask(cp, value_inside=1.0):
    m = torch.zeros(1, 8, 8)
    m[:, 2:6, 2:6] = value_inside  # object in the centre of the latent-size mask
    return m


def sa(cp, source, target_mode="source", given=None, layers=("l0", "l1"), **kw):
    target = cp.masks.TargetMask(target_mode, source, given)
    return cp.cpam.SelfAttentionPreservation(cp.mask_ops.as_mask(source, "s"), target, layers, plain_fraction=0.0, **kw)


def test_empty_masks_background_path_is_attention_to_all_source_keys(cp):
    call = make_call(cp)
    out = apply(cp, sa(cp, torch.zeros(1, 8, 8)), call)
    want, _ = explicit(call.q[1:2], call.k[0:1], call.v[0:1])
    torch.testing.assert_close(out[1:2], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0:1], explicit(call.q[0:1], call.k[0:1], call.v[0:1])[0], rtol=1e-5, atol=1e-5)


def test_cond_and_uncond_target_rows_pair_with_their_own_source_rows(cp):
    call = make_call(cp, roles=("source", "target", "source", "target"), conds=[True, True, False, False])
    out = apply(cp, sa(cp, torch.zeros(1, 8, 8)), call)
    torch.testing.assert_close(out[3:4], explicit(call.q[3:4], call.k[2:3], call.v[2:3])[0], rtol=1e-5, atol=1e-5)


def test_change_mode_combines_foreground_and_background(cp):
    source = block_mask(cp)
    keep_obj = cp.mask_ops.to_tokens(source, GRID)[0] >= 0.5
    for retain, step in ((False, 5), (True, 5), (True, 2)):
        call = make_call(cp, step=step)
        out = apply(cp, sa(cp, source, layers=tuple(f"l{i}" for i in range(10)), retain_object=retain,
                           step_threshold=3, layer_threshold=-1), call)
        q, ks, vs = call.q[1:2], call.k[0:1], call.v[0:1]
        bg, _ = explicit(q, ks, vs, ~keep_obj)
        fg = explicit(q, ks, vs, keep_obj)[0] if retain and step > 3 else explicit(q, call.k[1:2], call.v[1:2])[0]
        m = keep_obj.float().view(1, 1, -1, 1)
        torch.testing.assert_close(out[1:2], m * fg + (1 - m) * bg, rtol=1e-5, atol=1e-5)


def test_object_retention_respects_step_and_layer_thresholds(cp):
    source = block_mask(cp)
    c = sa(cp, source, layers=tuple(f"l{i}" for i in range(10)), retain_object=True, step_threshold=3,
           layer_threshold=8)
    assert c.object_retained(make_call(cp, step=4, layer="l9"))
    assert not c.object_retained(make_call(cp, step=3, layer="l9"))
    assert not c.object_retained(make_call(cp, step=4, layer="l8"))


def test_removal_mode_puts_zero_probability_on_object_keys(cp):
    source = block_mask(cp)
    obj = cp.mask_ops.to_tokens(source, GRID)[0] >= 0.5
    call = make_call(cp)
    out = apply(cp, sa(cp, source, mode="remove"), call)
    want, probs = explicit(call.q[1:2], call.k[0:1], call.v[0:1], ~obj)
    assert probs[..., obj].abs().max() == 0 and obj.any()
    torch.testing.assert_close(out[1:2], want, rtol=1e-5, atol=1e-5)
    # the output does not depend on the source object's values at all
    call2 = make_call(cp)
    call2.v[0:1, :, obj] += 100.0
    torch.testing.assert_close(apply(cp, sa(cp, source, mode="remove"), call2)[1:2], out[1:2], rtol=1e-5, atol=1e-5)


def test_random_plain_layers_are_reproducible_by_seed(cp):
    layers = tuple(f"l{i}" for i in range(40))
    a = [cp.cpam.plain_layers(layers, 0.1, 7, s) for s in range(5)]
    assert a == [cp.cpam.plain_layers(layers, 0.1, 7, s) for s in range(5)]
    assert all(len(x) == 4 for x in a)
    assert a != [cp.cpam.plain_layers(layers, 0.1, 8, s) for s in range(5)]
    # a plain layer leaves the target row untouched
    c = cp.cpam.SelfAttentionPreservation(torch.zeros(1, 8, 8), cp.masks.TargetMask("source", torch.zeros(1, 8, 8)),
                                          layers, plain_fraction=0.1, seed=7)
    plain_layer = sorted(c.plain_at(5))[0]
    call = make_call(cp, layer=plain_layer)
    torch.testing.assert_close(apply(cp, c, call)[1:2], explicit(call.q[1:2], call.k[1:2], call.v[1:2])[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_localized_extraction_call_level(cp, value):
    call = make_call(cp, kind="cross", roles=("source", "target", "aux"))
    le = cp.cpam.LocalizedCrossAttention(cp.masks.TargetMask("source", torch.full((1, 8, 8), value)))
    out = apply(cp, le, call)
    row = 1 if value == 1.0 else 2
    torch.testing.assert_close(out[1:2], explicit(call.q[1:2], call.k[row:row + 1], call.v[row:row + 1])[0],
                               rtol=1e-5, atol=1e-5)


def test_joint_attention_restricts_image_keys_and_swaps_text(cp):
    source = block_mask(cp)
    obj = cp.mask_ops.to_tokens(source, GRID)[0] >= 0.5
    call = make_call(cp, kind="joint", roles=("source", "target", "aux"))
    t = cp.masks.TargetMask("source", torch.zeros(1, 8, 8))
    chain = (cp.cpam.SelfAttentionPreservation(source, t, ("l0",), mode="remove", plain_fraction=0.0),
             cp.cpam.LocalizedCrossAttention(t))
    out = cp.controller.run_chain(chain, call, lambda c: c.attend())
    k = torch.cat([call.k[2:3, :, :8], call.k[0:1, :, 8:]], 2)  # empty-prompt text, source image keys
    v = torch.cat([call.v[2:3, :, :8], call.v[0:1, :, 8:]], 2)
    keep = torch.cat([torch.ones(8, dtype=torch.bool), ~obj])
    want, _ = explicit(call.q[1:2, :, 8:], k, v, keep)
    torch.testing.assert_close(out[1:2, :, 8:], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:2, :, :8], explicit(call.q[1:2, :, :8], call.k[1:2], call.v[1:2])[0],
                               rtol=1e-5, atol=1e-5)


def test_mask_resize_to_token_grid(cp):
    m = torch.zeros(1, 128, 128)
    m[:, :64] = 1.0
    g = cp.mask_ops.to_tokens(m, (4, 4)).view(4, 4)
    assert torch.equal(g[:2], torch.ones(2, 4)) and torch.equal(g[2:], torch.zeros(2, 4))
    assert cp.mask_ops.to_tokens(torch.ones(1, 2, 2), (4, 4)).shape == (1, 16)


def _editor(cp, fixtures, model, kind=""):
    """edit(target_text, mask, le) -> target latent, all from one 2-step inversion with the empty prompt."""
    empty = fixtures.tiny_conditioning("", kind)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5
    inv = cp.inversion.invert(model, x, empty, None, 1.0, 2, "simple", "auto")

    def edit(target_text, mask=None):
        patched = model if mask is None else cp.hooks.with_controller(
            model, cp.cpam.LocalizedCrossAttention(cp.masks.TargetMask("source", mask)))
        branches = [cp.edit.Branch("source", empty, 1.0),
                    cp.edit.Branch("target", fixtures.tiny_conditioning(target_text, kind), 2.0),
                    cp.edit.Branch("aux", empty, 1.0)]
        return cp.edit.edit(patched, inv, branches, negative=empty)[0]["target"]
    return edit


@pytest.mark.parametrize("kind", ["sd15", "flux", "flux2", "flux_kontext", "chroma"])
def test_localized_extraction_in_the_model(cp, fixtures, kind):
    """An all-ones mask is the plain edit (on Kontext: the reference tokens stay keys of every region)."""
    edit = _editor(cp, fixtures, fixtures.tiny_model(kind), kind)
    ones, zeros = torch.ones(1, 128, 128), torch.zeros(1, 128, 128)
    plain = edit("a blue square")
    torch.testing.assert_close(edit("a blue square", ones), plain, rtol=1e-4, atol=1e-4)
    zero = edit("a blue square", zeros)
    if kind == "sd15":  # U-Net text K/V depend on the prompt only: all-zeros == editing with the empty prompt
        torch.testing.assert_close(zero, edit(""), rtol=1e-4, atol=1e-4)
    else:  # Flux text K/V evolve with the aux branch's image stream: only a change is asserted
        assert not torch.allclose(zero, plain)


def test_localized_extraction_without_aux_branch_is_a_clear_error(cp, fixtures):
    model = fixtures.tiny_model("sd15")
    pos = fixtures.tiny_conditioning("a red circle")
    x = torch.randn(1, 4, 16, 16) * 0.5
    inv = cp.inversion.invert(model, x, pos, None, 1.0, 1, "simple", "auto")
    patched = cp.hooks.with_controller(model, cp.cpam.LocalizedCrossAttention(
        cp.masks.TargetMask("source", torch.ones(1, 8, 8))))
    with pytest.raises(ValueError, match="aux_positive"):
        cp.edit.edit(patched, inv, [cp.edit.Branch("source", pos, 1.0), cp.edit.Branch("target", pos, 1.0)])


def test_cross_attention_target_mask_follows_the_maps(cp):
    run = cp.run_state.RunState(branches=("source", "target"), phase="edit")
    maps = torch.zeros(2, 8, 8, 8)
    maps[1, 3, :4] = 1.0  # target row, token 3, top half
    run.store["k"] = {0: [maps, 1]}
    source = torch.zeros(1, 8, 8)
    t = cp.masks.TargetMask("cross_attention", source, tokens=[3], after_step=1, threshold=0.5, key="k")
    call = make_call(cp, step=0)
    call.run = run
    assert torch.equal(t.pixels(call), source)  # first T_m steps: M_s
    call.step = 1
    mt = t.pixels(call)
    assert mt.shape == (1, 8, 8) and torch.equal(mt[0, :4], torch.ones(4, 8)) and mt[0, 4:].sum() == 0
    with pytest.raises(ValueError, match="mask_tokens"):
        cp.masks.TargetMask("cross_attention", source)
    with pytest.raises(ValueError, match="target_mask"):
        cp.masks.TargetMask("given", source)


def test_nodes_run_end_to_end(run):
    mask_mode = "cross_attention"  # M_s for step 0, then the target's maps of token 2
    prompt = {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a red circle"}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": "a blue circle"}},
        "4": {"class_type": "TinyTestConditioning", "inputs": {"text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["4", 0], "steps": 2, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "m": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "8": {"class_type": "AttentionEditCPAMSelfAttention", "inputs": {
            "model": ["1", 0], "source_mask": ["m", 0], "mode": "change", "retain_object": True,
            "step_threshold": 0, "layer_threshold": 0, "plain_fraction": 0.1, "seed": 3,
            "target_mask_mode": mask_mode, "mask_after_step": 1, "mask_threshold": 0.3, "mask_tokens": "2"}},
        "9": {"class_type": "AttentionEditCPAMCrossAttention", "inputs": {
            "model": ["8", 0], "source_mask": ["m", 0], "target_mask_mode": mask_mode, "mask_after_step": 1,
            "mask_threshold": 0.3, "mask_tokens": "2"}},
        "7": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["9", 0], "inversion": ["6", 0], "target_positive": ["3", 0], "target_cfg": 2.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["4", 0],
            "aux_positive": ["4", 0]}},
    }
    out = run(prompt)
    edited = out["7"][0]["samples"]
    assert edited.shape == (1, 4, 16, 16) and torch.isfinite(edited).all()
