"""Uniform Attention Maps and mask-guided Blend: exact identities, pass-through, mask formula, graphs."""
import math

import pytest
import torch

from test_inversion import source_latent
from graphs import tiny_inputs


@pytest.fixture(scope="module")
def uam(pack):
    class UAM:
        uniform = pack("attention.uniform")
        context = pack("attention.context")
        controller = pack("attention.controller")
        run_state = pack("attention.run_state")
        hooks = pack("attention.hooks")
        blend = pack("latent_ops.blend")
        edit = pack("latent_ops.edit")
        inversion = pack("latent_ops.inversion")
        latent_hooks = pack("latent_ops.latent_hooks")
        nodes = pack("nodes.uniform_attention")
    return UAM


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_call(uam, q, k, v, kind, roles, phase="edit", txt=None, img=None):
    run = uam.run_state.RunState(branches=tuple(dict.fromkeys(roles)), phase=phase)
    img = img if img is not None else slice(0, q.shape[2])
    return uam.context.AttnCall(q, k, v, kind, "x", img, txt if txt is not None else slice(0, k.shape[2]), (1, 1),
                                (1, 1), 0, 1.0, list(roles), [True] * len(roles), run)


def plain(call):
    return (call.q @ call.k.transpose(-1, -2) * call.scale).softmax(-1) @ call.v


# ---- uniform attention: the exact identities ----

def test_uniform_cross_is_mean_of_v_and_independent_of_q(uam):
    k, v = rand(3, 2, 8, 4, seed=1), rand(3, 2, 8, 4, seed=2)
    roles = ["source", "target", "aux"]
    outs = []
    for seed in (3, 4):
        q = rand(3, 2, 16, 4, seed=seed)
        call = make_call(uam, q, k, v, "cross", roles)
        out = uam.controller.run_chain((uam.uniform.UniformAttention("aux"),), call, plain)
        assert torch.equal(out[2], v[2].mean(dim=1, keepdim=True).expand(2, 16, 4))  # exactly mean of V
        assert torch.equal(out[:2], plain(call)[:2])  # other rows bit-identical
        outs.append(out)
    assert torch.equal(outs[0][2], outs[1][2]) and not torch.equal(outs[0][:2], outs[1][:2])


@pytest.mark.parametrize("branches,phase,expected", [
    ("all", "edit", [0, 1, 2]), ("target", "edit", [1]), ("source", "edit", [0]), ("aux", "edit", [2]),
    ("aux", "invert", [0, 1, 2])])
def test_branch_selection(uam, branches, phase, expected):
    q, k, v = rand(3, 1, 4, 4), rand(3, 1, 5, 4, seed=1), rand(3, 1, 5, 4, seed=2)
    call = make_call(uam, q, k, v, "cross", ["source", "target", "aux"], phase=phase)
    out = uam.controller.run_chain((uam.uniform.UniformAttention(branches),), call, plain)
    for row in range(3):
        same = torch.equal(out[row], plain(call)[row])
        assert same != (row in expected), (row, branches, phase)
    call = make_call(uam, q, k, v, "self", ["source", "target", "aux"], phase=phase)
    assert not uam.uniform.UniformAttention(branches).wants(call)  # self-attention untouched


def test_joint_extension_keeps_text_mass_and_spreads_it_evenly(uam):
    n_txt, n_img = 5, 12
    q, k, v = rand(2, 3, n_txt + n_img, 8), rand(2, 3, n_txt + n_img, 8, seed=1), rand(2, 3, n_txt + n_img, 8, seed=2)
    call = make_call(uam, q, k, v, "joint", ["target", "aux"], txt=slice(0, n_txt), img=slice(n_txt, n_txt + n_img))
    out = uam.controller.run_chain((uam.uniform.UniformAttention("aux"),), call, plain)
    ref = plain(call)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1, :, :n_txt], ref[1, :, :n_txt])
    probs = (q[1] @ k[1].transpose(-1, -2) * call.scale).softmax(-1)[:, n_txt:]  # image queries
    mass = probs[..., :n_txt].sum(-1, keepdim=True)
    uniform = torch.cat([mass.expand(-1, -1, n_txt) / n_txt, probs[..., n_txt:]], dim=-1)
    torch.testing.assert_close(uniform.sum(-1), torch.ones(3, n_img))
    torch.testing.assert_close(out[1, :, n_txt:], uniform @ v[1], rtol=1e-5, atol=1e-6)
    uam.uniform.CHUNK_ELEMENTS, saved = 7, uam.uniform.CHUNK_ELEMENTS  # chunked path gives the same result
    try:
        chunked = uam.controller.run_chain((uam.uniform.UniformAttention("aux"),), call, plain)
    finally:
        uam.uniform.CHUNK_ELEMENTS = saved
    torch.testing.assert_close(chunked, out)


# ---- on real models: uniform rows are mean(V), other branches pass through bit-identically ----

class Probe:
    """Records (roles, v, out) of every cross/joint call after the controllers before it."""
    kinds = ("cross", "joint")

    def __init__(self, log):
        self.log = log

    def wants(self, call):
        return call.kind in self.kinds

    def before(self, call):
        pass

    def after(self, call, out):
        self.log.append((list(call.roles), call.kind, call.img, call.txt, call.v.clone(), out.clone()))
        return out

    def __deepcopy__(self, memo):
        return self


@pytest.mark.parametrize("kind", ["sd15", "flux", "flux2", "flux_kontext", "chroma"])
def test_edit_with_uniform_aux_leaves_other_branches_bit_identical(uam, fixtures, kind):
    model = fixtures.tiny_model(kind)
    src, tgt, aux = (fixtures.tiny_conditioning(t, kind) for t in ("a red circle", "a blue circle", "a green cat"))
    x0 = source_latent(7)
    inv = uam.inversion.invert(model, x0, src, steps=2)
    branches = [uam.edit.Branch("source", src, 1.0), uam.edit.Branch("target", tgt, 1.0),
                uam.edit.Branch("aux", aux, 1.0)]  # (an all-zero empty prompt has uniform maps already)
    base, _ = uam.edit.edit(model, inv, branches, source_mode="reconstruct")
    log = []
    patched = uam.hooks.with_controller(uam.hooks.with_controller(model, uam.uniform.UniformAttention("aux")),
                                        Probe(log))
    out, _ = uam.edit.edit(patched, inv, branches, source_mode="reconstruct")
    assert torch.equal(out["source"], base["source"]) and torch.equal(out["target"], base["target"])
    assert not torch.equal(out["aux"], base["aux"])
    assert log
    for roles, call_kind, img, txt, v, o in log:
        aux = roles.index("aux")
        if call_kind == "cross":
            assert torch.equal(o[aux], v[aux].mean(dim=1, keepdim=True).expand_as(o[aux]))
        else:  # Flux joint attention: text keys got a uniform share of each image query's text mass
            assert o[aux, :, img].shape == (o.shape[1], img.stop - img.start, o.shape[3])


# ---- blend: mask formula, gate, identities ----

def test_quantile_ramp_threshold_and_dilation(uam):
    b = uam.blend
    assert [b.ramp_quantile(0.5, i, 5) for i in range(5)] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert b.ramp_quantile(0.5, 0, 1) == 0.5
    # threshold: quantile over each image's whole latent; scale 2 = the authors' clamp-and-compare
    x = rand(2, 4, 8, 8, seed=5)
    y = rand(2, 4, 8, 8, seed=6)
    for q in (0.3, 0.5, 0.9):
        mask = b.adaptive_mask(x, y, q, threshold_scale=2.0, radius=0)
        for i in range(2):
            delta = x[i] - y[i]
            thr = delta.abs().quantile(q)
            code = ((delta - delta.clamp(-thr, thr)).abs() > thr).float()
            assert torch.equal(mask[i], code)
        m1 = b.adaptive_mask(x, y, q, threshold_scale=1.0, radius=0)
        assert m1.mean().item() == pytest.approx(1 - q, abs=0.02)  # share above the q-quantile
    # dilation: one cell -> 3x3 square in its own channel only, clipped at the border
    m = torch.zeros(1, 2, 6, 6)
    m[0, 0, 2, 3] = 1
    m[0, 1, 0, 0] = 1
    d = b.dilate(m, 1)
    assert d[0, 0].sum() == 9 and torch.equal(d[0, 0, 1:4, 2:5], torch.ones(3, 3))
    assert d[0, 1].sum() == 4 and torch.equal(d[0, 1, :2, :2], torch.ones(2, 2))
    assert d[0, 1, 2:].sum() == 0 and torch.equal(b.dilate(m, 0), m)
    assert b.dilate(m, 2)[0, 0].sum() == 25


def test_blend_identities_and_keep_noise_step(uam):
    b = uam.blend
    tgt, aux = rand(1, 4, 6, 6, seed=1), rand(1, 4, 6, 6, seed=2)
    assert torch.equal(b.blend(tgt, aux, torch.ones(1, 4, 6, 6)), tgt)
    assert torch.equal(b.blend(tgt, aux, torch.zeros(1, 1, 6, 6)), aux)
    x = rand(1, 4, 6, 6, seed=3) * 3
    for flow, (s, s_next) in ((False, (2.0, 1.2)), (True, (0.6, 0.4))):
        d = b.keep_noise_denoised(tgt, aux, s, s_next, flow)
        x_next = x + (s_next - s) * (x - d) / s  # the pack's DDIM / Euler step with the returned estimate
        if flow:
            noise = (x - (1 - s) * tgt) / s
            torch.testing.assert_close(x_next, (1 - s_next) * aux + s_next * noise)
        else:
            torch.testing.assert_close(x_next, aux + s_next * (x - tgt) / s)
        assert torch.equal(b.keep_noise_denoised(tgt, tgt, s, s_next, flow), tgt)


def test_gate_maps_t_mask_to_sigma(uam, fixtures):
    b = uam.blend
    ms = fixtures.tiny_model("sd15").get_model_object("model_sampling")
    gate = b.gate_sigma(ms, 200, False)
    assert float(ms.sigma(torch.tensor(199.0))) < gate < float(ms.sigma(torch.tensor(200.0)))  # t < 200 <=> sigma < gate
    assert b.gate_sigma(ms, 1000, False) == math.inf and b.gate_sigma(ms, 0, False) == 0.0
    assert b.gate_sigma(None, 200, True) == 0.2


def edit_three(uam, model, fixtures, steps=3, seed=8):
    x0 = source_latent(seed)
    src, tgt, empty = (fixtures.tiny_conditioning("a red circle"), fixtures.tiny_conditioning("a blue square"),
                       fixtures.tiny_conditioning(""))
    inv = uam.inversion.invert(model, x0, empty, steps=steps)
    branches = [uam.edit.Branch("source", src, 1.0), uam.edit.Branch("target", tgt, 1.0),
                uam.edit.Branch("aux", empty, 1.0)]
    return lambda m: uam.edit.edit(m, inv, branches)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_fixed_mask_ones_gives_target_and_zeros_gives_aux(uam, fixtures, kind):
    model = uam.hooks.with_controller(fixtures.tiny_model(kind), uam.uniform.UniformAttention("aux"))
    flow = kind == "flux"
    go = edit_three(uam, model, fixtures, steps=2)
    base, _ = go(model)
    hook = lambda m: uam.blend.BlendHook("fixed_mask", "target", "aux", gate=math.inf, flow=flow, mask=m)
    ones, _ = go(uam.latent_hooks.with_latent_hook(model, hook(torch.ones(128, 128))))
    assert torch.equal(ones["target"], base["target"]) and torch.equal(ones["aux"], base["aux"])
    zeros, _ = go(uam.latent_hooks.with_latent_hook(model, hook(torch.zeros(1, 128, 128))))
    torch.testing.assert_close(zeros["target"], zeros["aux"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base["target"], base["aux"], atol=1e-3)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_adaptive_blend_keeps_per_step_masks_below_the_gate(uam, fixtures, kind):
    model = uam.hooks.with_controller(fixtures.tiny_model(kind), uam.uniform.UniformAttention("aux"))
    go = edit_three(uam, model, fixtures, steps=3)
    base, _ = go(model)
    flow = kind == "flux"
    sigmas = uam.inversion.schedule(model, 3, "simple")
    gate = float(sigmas[1])  # only step 2 evaluates below it
    hook = uam.blend.BlendHook("adaptive", "target", "aux", quantile=0.5, threshold_scale=2.0, gate=gate, flow=flow)
    out, run = go(uam.latent_hooks.with_latent_hook(model, hook))
    masks = run.store[uam.blend.MASKS_KEY]
    assert sorted(masks) == [2]
    m = masks[2]
    assert m.dtype == torch.bool and m.shape == (1, 4, 16, 16) and 0 < m.float().mean() < 1
    assert torch.equal(out["source"], base["source"]) and torch.equal(out["aux"], base["aux"])
    assert not torch.equal(out["target"], base["target"])
    # on the last step: kept cells carry the target's prediction, the rest the aux's -> closer to aux there
    assert ((out["target"] - out["aux"]).abs() * ~m).sum() < ((base["target"] - base["aux"]).abs() * ~m).sum()


def test_blend_needs_the_branches_it_names(uam, fixtures):
    model = fixtures.tiny_model("sd15")
    pos = fixtures.tiny_conditioning("a")
    inv = uam.inversion.invert(model, source_latent(), pos, steps=2)
    hooked = uam.latent_hooks.with_latent_hook(model, uam.blend.BlendHook("adaptive", gate=math.inf))
    with pytest.raises(ValueError, match="no 'aux' branch.*aux_positive"):
        uam.edit.edit(hooked, inv, [uam.edit.Branch("source", pos, 1.0), uam.edit.Branch("target", pos, 1.0)])
    with pytest.raises(ValueError, match="mask: mode is fixed_mask"):
        uam.nodes.Blend().patch(model, "fixed_mask", "target", "aux", 0.5, 2.0, 200, 1)
    with pytest.raises(ValueError, match="fill: choose a branch other"):
        uam.nodes.Blend().patch(model, "adaptive", "target", "target", 0.5, 2.0, 200, 1)


# ---- graphs through ComfyUI's executor ----

@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_invert_uniform_patch_blend_edit_graph_runs(run, kind):
    prompt = {
        **tiny_inputs(kind),
        "8": {"class_type": "AttentionEditUniformAttnPatch", "inputs": {
            "model": ["1", 0], "branches": "aux", "during_inversion": True}},
        "9": {"class_type": "AttentionEditBlend", "inputs": {
            "model": ["8", 0], "mode": "adaptive", "into": "target", "fill": "aux", "quantile": 0.5,
            "threshold_scale": 2.0, "T_mask": 1000, "dilation": 1}},
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["8", 0], "latent": ["5", 0], "positive": ["4", 0], "steps": 3, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "7": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["9", 0], "inversion": ["6", 0], "target_positive": ["3", 0], "target_cfg": 1.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "source_positive": ["2", 0],
            "aux_positive": ["4", 0], "aux_cfg": 1.0}},
        "10": {"class_type": "AttentionEditBlendMaskPreview", "inputs": {
            "edited": ["7", 0], "source": ["7", 1], "quantile": 0.5, "threshold_scale": 1.0, "dilation": 1}},
    }
    out = run(prompt)
    edited, source, aux = (out["7"][i]["samples"] for i in range(3))
    assert edited.shape == source.shape == aux.shape == (1, 4, 16, 16)
    assert not torch.equal(edited, aux)
    mask = out["10"][0]
    assert mask.shape == (1, 128, 128) and 0 <= mask.min() and mask.max() <= 1
