"""Source attention injection (MasaCtrl key+value / RF-Solver-Edit value / Plug-and-Play query+key): full K/V
injection equals KV-mix with an empty mask, value and query+key modes against a hand computation, the step range,
the layers it acts on (both families, the papers' layer counts; query+key also in FlowEdit), pass pairing, the node
through ComfyUI's executor, and clear errors."""
import pytest
import torch
from graphs import tiny_inputs
from probes import EditProbe

NODE = "AttentionEditSourceInjection"
KV, V, QK = "key+value (MasaCtrl)", "value (RF-Solver-Edit)", "query+key (Plug-and-Play)"
ALL = "all"
LATER = "later: U-Net decoder / Flux single blocks"
EARLIER = "earlier: U-Net encoder+middle / Flux double blocks"
TINY_SD15 = ("input.1.0", "input.3.0", "middle.0.0", "output.0.0", "output.1.0", "output.2.0", "output.3.0")


@pytest.fixture(scope="module")
def si(pack):
    class SI:
        inj = pack("attention.source_injection")
        context = pack("attention.context")
        controller = pack("attention.controller")
        run_state = pack("attention.run_state")
        hooks = pack("attention.hooks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        flowedit = pack("latent_ops.flowedit")
        nodes = pack("nodes.source_injection")
    return SI


def flux_10(fixtures):
    """A tiny Flux with 4 double and 6 single blocks (enough blocks to tell the layer recipes apart)."""
    arch = fixtures.architectures
    return arch.build_flux(arch.flux_config(context_dim=fixtures.CONTEXT_DIM, pooled_dim=fixtures.CONTEXT_DIM,
                                            double_blocks=4, single_blocks=6), seed=0)


# ----- the papers' recipes on the real models' layer lists -----------------------------------------------------

SD15 = tuple(f"input.{n}.0" for n in (1, 2, 4, 5, 7, 8)) + ("middle.0.0",) + \
    tuple(f"output.{n}.0" for n in range(3, 12))
SDXL = tuple(f"input.{n}.{i}" for n, d in ((4, 2), (5, 2), (7, 10), (8, 10)) for i in range(d)) + \
    tuple(f"middle.0.{i}" for i in range(10)) + \
    tuple(f"output.{n}.{i}" for n, d in ((0, 10), (1, 10), (2, 10), (3, 2), (4, 2), (5, 2)) for i in range(d))
FLUX_DEV = tuple(f"double.{i}" for i in range(19)) + tuple(f"single.{i}" for i in range(38))


def test_paper_layers_and_steps_on_the_real_layer_counts(si):
    assert len(SD15) == 16 and len(SDXL) == 70 and len(FLUX_DEV) == 57
    # MasaCtrl: transformer blocks 10..15 of SD1.5 (output blocks 6-11); SDXL from 44 (its code's first config)
    assert si.inj.paper_layers(SD15, "key+value", "unet") == tuple(f"output.{n}.0" for n in range(6, 12))
    assert si.inj.paper_layers(SDXL, "key+value", "unet") == SDXL[44:] and SDXL[44] == "output.1.0"
    assert si.inj.paper_layers(FLUX_DEV, "key+value", "dit") == tuple(f"single.{i}" for i in range(17, 38))
    # RF-Solver-Edit: FLUX single blocks 20..37; U-Net decoder self-attention
    assert si.inj.paper_layers(FLUX_DEV, "value", "dit") == tuple(f"single.{i}" for i in range(20, 38))
    assert si.inj.paper_layers(SD15, "value", "unet") == tuple(f"output.{n}.0" for n in range(3, 12))
    assert si.inj.from_fraction(si.inj.group_layers(SD15, "all"), 0.625) == SD15[10:]
    assert si.inj.group_layers(FLUX_DEV, EARLIER) == FLUX_DEV[:19]
    # steps: MasaCtrl from 4 of 50 to the end; RF-Solver-Edit the first 3 of 25
    assert si.inj.paper_steps("key+value", 50) == (4, 50)
    assert si.inj.paper_steps("key+value", 20) == (2, 20)
    assert si.inj.paper_steps("key+value", 10) == (1, 10)
    assert si.inj.paper_steps("value", 25) == (0, 3)
    assert si.inj.paper_steps("value", 15) == (0, 2)
    assert si.inj.paper_steps("value", 5) == (0, 1)
    # Plug-and-Play: the first half of the steps, SD1.5 decoder self-attention from the 2nd of 9 (output 4-11);
    # Flux (our extension): every single block; SDXL: the same share of its decoder
    assert si.inj.paper_steps("query+key", 50) == (0, 25)
    assert si.inj.paper_steps("query+key", 15) == (0, 8)
    assert si.inj.paper_steps("query+key", 1) == (0, 1)
    assert si.inj.paper_layers(SD15, "query+key", "unet") == tuple(f"output.{n}.0" for n in range(4, 12))
    assert si.inj.paper_layers(SDXL, "query+key", "unet") == SDXL[-36 + 4:]
    assert si.inj.paper_layers(FLUX_DEV, "query+key", "dit") == FLUX_DEV[19:]
    joint_only = tuple(f"double.{i}" for i in range(24))  # SD3.5 / Qwen-Image: no single blocks, the later half
    assert si.inj.paper_layers(joint_only, "query+key", "dit") == joint_only[12:]


# ----- planted calls ----------------------------------------------------------------------------------------------

def planted(si, kind, roles=("source", "target"), conds=None, layer="single.1", step=0, txt=5, n=12, total=10):
    g = torch.Generator().manual_seed(3)
    b = len(roles)
    length = n + (txt if kind == "joint" else 0)
    q, k, v = (torch.randn(b, 2, length, 8, generator=g) for _ in range(3))
    img = slice(txt, txt + n) if kind == "joint" else slice(0, n)
    run = si.run_state.RunState(branches=tuple(dict.fromkeys(roles)), phase="edit", total_steps=total)
    txt_slice = slice(0, txt) if kind == "joint" else None
    return si.context.AttnCall(q, k, v, kind, layer, img, txt_slice, (3, 4), (6, 8), step, 1.0, list(roles),
                               list(conds or [True] * b), run)


def plain_attention(q, k, v):
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1) @ v


@pytest.mark.parametrize("kind", ["self", "joint"])
def test_value_mode_on_a_planted_call_matches_a_hand_computation(si, kind):
    call = planted(si, kind)
    q0, k0, v0 = call.q.clone(), call.k.clone(), call.v.clone()
    ctl = si.inj.SourceInjection("value", {"single.1"}, 0, 1)
    assert ctl.wants(call)
    out = si.controller.run_chain((ctl,), call, lambda c: c.attend())
    assert torch.equal(call.q, q0) and torch.equal(call.k, k0)  # queries and keys untouched
    img = call.img
    v_mixed = v0[1].clone()
    v_mixed[:, img] = v0[0][:, img]  # the source's image values; text values (joint) stay the target's
    expected_target = plain_attention(q0[1], k0[1], v_mixed)
    torch.testing.assert_close(out[1], expected_target, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], plain_attention(q0[0], k0[0], v0[0]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1], plain_attention(q0[1], k0[1], v0[1]), atol=1e-4)
    # key+value: the image keys are the source's too (text keys stay the target's)
    call = planted(si, kind)
    out = si.controller.run_chain((si.inj.SourceInjection("key+value", {"single.1"}, 0, 1),), call,
                                  lambda c: c.attend())
    k_mixed = k0[1].clone()
    k_mixed[:, img] = k0[0][:, img]
    torch.testing.assert_close(out[1], plain_attention(q0[1], k_mixed, v_mixed), rtol=1e-5, atol=1e-6)
    # query+key: the source's image queries and keys (its attention map) on the target's own values
    call = planted(si, kind)
    out = si.controller.run_chain((si.inj.SourceInjection("query+key", {"single.1"}, 0, 1),), call,
                                  lambda c: c.attend())
    q_mixed = q0[1].clone()
    q_mixed[:, img] = q0[0][:, img]
    torch.testing.assert_close(out[1], plain_attention(q_mixed, k_mixed, v0[1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], plain_attention(q0[0], k0[0], v0[0]), rtol=1e-5, atol=1e-6)
    assert torch.equal(call.v, v0)  # no value is replaced


def test_pass_pairing_and_gating_on_planted_calls(si):
    roles = ("source", "target", "source", "target")
    call = planted(si, "self", roles, conds=[False, False, True, True])
    v0 = call.v.clone()
    si.inj.SourceInjection("value", {"single.1"}, 0, 1).before(call)
    assert torch.equal(call.v[1], v0[0]) and torch.equal(call.v[3], v0[2])  # uncond <- uncond, cond <- cond
    assert torch.equal(call.v[0], v0[0]) and torch.equal(call.v[2], v0[2])  # source rows untouched
    # no source uncond rows in the call: the source cond row serves both passes
    call = planted(si, "self", ("source", "target", "target"), conds=[True, False, True])
    v0 = call.v.clone()
    si.inj.SourceInjection("value", {"single.1"}, 0, 1).before(call)
    assert torch.equal(call.v[1], v0[0]) and torch.equal(call.v[2], v0[0])
    ctl = si.inj.SourceInjection("value", {"single.1"}, 2, 4)
    assert [ctl.wants(planted(si, "self", step=s)) for s in range(6)] == [False, False, True, True, False, False]
    assert not ctl.wants(planted(si, "self", step=2, layer="single.0"))
    assert not ctl.wants(planted(si, "self", ("source", "aux"), step=2))
    other_phase = planted(si, "self", step=2)
    other_phase.run.phase = "invert"
    assert not ctl.wants(other_phase)
    auto = si.inj.SourceInjection("key+value", {"single.1"})  # MasaCtrl's range for 10 steps: 1..9
    assert [auto.wants(planted(si, "self", step=s)) for s in range(10)] == [False] + [True] * 9


def test_clear_errors(si, fixtures):
    call = planted(si, "joint", ("target", "target"))
    ctl = si.inj.SourceInjection("key+value", {"single.1"}, 0, 1)
    with pytest.raises(ValueError, match="needs the Edit Sampler's source branch in the same model call"):
        ctl.before(call)
    with pytest.raises(ValueError, match=r"end_step \(2\) must be greater than start_step \(2\)"):
        si.inj.SourceInjection("value", {"single.1"}, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        si.inj.SourceInjection("query", {"single.1"})
    node = si.nodes.SourceInjection()
    with pytest.raises(ValueError, match="layers: 'all' with layer_fraction 1.0 selects none"):
        node.patch(fixtures.tiny_model("sd15"), KV, 0, 5, ALL, 1.0)
    with pytest.raises(ValueError, match="start_step: a step index >= 0, or -1"):
        node.patch(fixtures.tiny_model("sd15"), KV, -2, 5, ALL, 0.0)


def test_every_input_has_a_tooltip(si):
    node = si.nodes.SourceInjection
    inputs = node.INPUT_TYPES()["required"]
    assert set(inputs) == {"model", "mode", "start_step", "end_step", "layers", "layer_fraction"}
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    assert node.DESCRIPTION and node.OUTPUT_TOOLTIPS
    assert si.nodes.NODE_DISPLAY_NAME_MAPPINGS[NODE] == "Source Attention Injection (MasaCtrl / RF-Solver-Edit)"


# ----- the layers and steps it acts on, in real sampling ----------------------------------------------------------

class Recorder:
    """Delegates to a controller and records the (step, layer) of every call it acts on."""

    def __init__(self, inner, acted):
        self.inner, self.acted = inner, acted

    def wants(self, call):
        return self.inner.wants(call)

    def before(self, call):
        self.acted.append((call.step, call.layer))
        self.inner.before(call)

    def after(self, call, out):
        return self.inner.after(call, out)

    def __deepcopy__(self, memo):
        return self


def latent(batch=1):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5


def run_recorded(si, fixtures, model, steps, mode, start, end, layers, fraction=0.0, cfg=2.0):
    pos, tgt, neg = (fixtures.tiny_conditioning(t) for t in ("a red cat", "a blue cat", ""))
    (patched,) = si.nodes.SourceInjection().patch(model, mode, start, end, layers, fraction)
    ctl = si.controller.chain_of(patched)[-1]
    pre, post, acted = [], [], []
    m = si.hooks.with_controller(model, EditProbe(pre))
    m = si.hooks.with_controller(m, Recorder(ctl, acted))
    m = si.hooks.with_controller(m, EditProbe(post))
    inv = si.inversion.invert(model, latent(), pos, steps=steps)
    si.edit.edit(m, inv, [si.edit.Branch("source", pos, 1.0), si.edit.Branch("target", tgt, cfg)], negative=neg)
    return pre, post, set(acted)


def check_injection(pre, post, acted, mode):
    """Outside `acted` nothing changes; inside, the target's image Q, K, V are the paired source's where the mode
    says (key+value: K, V; value: V; query+key: Q, K) and its own elsewhere; text tokens stay the target's."""
    assert len(pre) == len(post) > 0
    taken = {"key+value": "kv", "value": "v", "query+key": "qk"}[mode]
    for (kind, layer, step, q0, k0, v0, roles, conds, img, *_), (_, _, _, q1, k1, v1, *_) in zip(pre, post):
        if kind == "cross" or (step, layer) not in acted:
            assert torch.equal(q0, q1) and torch.equal(k0, k1) and torch.equal(v0, v1)
            continue
        for r, (role, cond) in enumerate(zip(roles, conds)):
            if role != "target":
                assert torch.equal(q1[r], q0[r]) and torch.equal(k1[r], k0[r]) and torch.equal(v1[r], v0[r])
                continue
            s = [i for i, (ro, c) in enumerate(zip(roles, conds)) if ro == "source" and c == cond][0]
            text = torch.ones(v0.shape[2], dtype=torch.bool)
            text[img] = False
            for name, before, after in (("q", q0, q1), ("k", k0, k1), ("v", v0, v1)):
                assert torch.equal(after[r, :, img], (before[s] if name in taken else before[r])[:, img])
                assert torch.equal(after[r, :, text], before[r, :, text])


@pytest.mark.parametrize("mode,steps,layers,fraction,expected_layers,expected_steps", [
    (KV, 7, "paper default", 0.0, TINY_SD15[4:], range(1, 7)),       # 10/16 of 7 layers -> from 4; 4/50*7 -> 1
    (V, 13, "paper default", 0.0, TINY_SD15[3:], range(0, 2)),       # decoder; 3/25*13 -> 2 steps
    (KV, 3, LATER, 0.5, TINY_SD15[5:], range(0, 3)),                 # 4 decoder layers from round(2.0); 4/50*3 -> 0
    (V, 3, EARLIER, 0.0, TINY_SD15[:3], range(0, 1)),
    (QK, 5, "paper default", 0.0, TINY_SD15[3:], range(0, 3)),      # 4 decoder layers from round(4/9) = 0; 5/2 -> 3
])
def test_unet_acts_on_exactly_the_documented_layers_and_steps(si, fixtures, mode, steps, layers, fraction,
                                                              expected_layers, expected_steps):
    model = fixtures.tiny_model("sd15")
    pre, post, acted = run_recorded(si, fixtures, model, steps, mode, -1, -1, layers, fraction)
    assert acted == {(s, name) for s in expected_steps for name in expected_layers}
    check_injection(pre, post, acted, si.nodes.MODES[mode])


FLUX_10 = tuple(f"double.{i}" for i in range(4)) + tuple(f"single.{i}" for i in range(6))


@pytest.mark.parametrize("mode,start,end,layers,fraction,expected_layers,expected_steps", [
    (KV, -1, -1, "paper default", 0.0, FLUX_10[6:], range(0, 3)),    # 10/16 of 10 -> from 6; 4/50*3 -> 0
    (V, -1, -1, "paper default", 0.0, FLUX_10[7:], range(0, 1)),     # singles from round(20/38*6) = 3
    (V, 1, 3, ALL, 0.3, FLUX_10[3:], range(1, 3)),
    (KV, 0, 2, EARLIER, 0.0, FLUX_10[:4], range(0, 2)),
    (QK, -1, -1, "paper default", 0.0, FLUX_10[4:], range(0, 2)),    # every single block; 3/2 -> 2
])
def test_flux_acts_on_exactly_the_documented_layers_and_steps(si, fixtures, mode, start, end, layers, fraction,
                                                              expected_layers, expected_steps):
    model = flux_10(fixtures)
    assert si.inj.self_attention_layers(model) == FLUX_10
    pre, post, acted = run_recorded(si, fixtures, model, 3, mode, start, end, layers, fraction)
    assert acted == {(s, name) for s in expected_steps for name in expected_layers}
    check_injection(pre, post, acted, si.nodes.MODES[mode])


@pytest.mark.parametrize("arch", ["sd15", "flux"])
def test_plug_and_play_in_flowedit_acts_on_its_own_steps(si, fixtures, arch):
    """In FlowEdit (the recolour workflows), query+key acts on FlowEdit's own steps (0..n_max-1 with the end at
    n_max), gives the target the source's image Q and K and keeps its V, and changes the edit."""
    model = fixtures.tiny_model("sd15") if arch == "sd15" else flux_10(fixtures)
    pos, tgt, neg = (fixtures.tiny_conditioning(t) for t in ("a red cat", "a blue cat", ""))
    (patched,) = si.nodes.SourceInjection().patch(model, QK, 0, 3, "paper default", 0.0)
    ctl = si.controller.chain_of(patched)[-1]
    pre, post, acted = [], [], []
    m = si.hooks.with_controller(model, EditProbe(pre))
    m = si.hooks.with_controller(m, Recorder(ctl, acted))
    m = si.hooks.with_controller(m, EditProbe(post))
    settings = dict(steps=5, n_max=3, source_cfg=1.0, target_cfg=2.0, seed=0)
    injected, _ = si.flowedit.flow_edit(m, latent(), pos, tgt, neg, **settings)
    layers = si.inj.paper_layers(si.inj.self_attention_layers(model), "query+key",
                                 "unet" if arch == "sd15" else "dit")
    assert {step for step, _ in acted} == {0, 1, 2} and {layer for _, layer in acted} == set(layers)
    check_injection(pre, post, set(acted), "query+key")
    plain, _ = si.flowedit.flow_edit(model, latent(), pos, tgt, neg, **settings)
    assert not torch.allclose(injected["target"], plain["target"], atol=1e-4)


def test_tiny_unet_layer_names(si, fixtures):
    assert si.inj.self_attention_layers(fixtures.tiny_model("sd15")) == TINY_SD15


# ----- through ComfyUI's executor ---------------------------------------------------------------------------------

def graph(kind, batch=1, steps=3, target_cfg=1.0, patches=()):
    """Tiny inputs, Invert, then one Edit Sampler per MODEL patch (node id "p<i>", sampler "e<i>"), plus "plain"."""
    prompt = tiny_inputs(kind)
    prompt["5"]["inputs"]["batch_size"] = batch
    prompt["6"] = {"class_type": "AttentionEditInvert", "inputs": {
        "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": steps, "scheduler": "simple",
        "solver": "auto", "cfg": 1.0}}
    models = {"plain": ["1", 0]}
    for i, patch in enumerate(patches):
        prompt[f"p{i}"] = patch
        models[str(i)] = [f"p{i}", 0]
    for name, model in models.items():
        inputs = {"model": model, "inversion": ["6", 0], "target_positive": ["3", 0], "target_cfg": target_cfg,
                  "source_mode": "replay", "source_cfg": 1.0, "start_step": 0}
        if target_cfg != 1.0:
            inputs["negative"] = ["4", 0]
        prompt[f"e{name}"] = {"class_type": "AttentionEditSampler", "inputs": inputs}
    return prompt


def injection(mode, start, end, layers="all", fraction=0.0):
    return {"class_type": NODE, "inputs": {"model": ["1", 0], "mode": mode, "start_step": start, "end_step": end,
                                           "layers": layers, "layer_fraction": fraction}}


@pytest.mark.parametrize("kind,batch", [("sd15", 1), ("flux", 2)])
def test_key_value_everywhere_equals_kv_mix_with_an_empty_mask(run, kind, batch):
    """Full source K/V injection two ways: MasaCtrl on all layers for all steps == KV-mix where the mask is empty."""
    prompt = graph(kind, batch, patches=[
        injection(KV, 0, 1000),
        {"class_type": "AttentionEditKVMix", "inputs": {"model": ["1", 0], "delta": 0.9, "inject_steps": 1000,
                                                        "edit_type": "change", "kv_source": "batch",
                                                        "mask": ["m", 0]}},
    ])
    prompt["m"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}}
    out = run(prompt)
    masactrl, kv_mix, plain = (out[f"e{n}"][0]["samples"] for n in ("0", "1", "plain"))
    assert masactrl.shape == (batch, 4, 16, 16)
    assert torch.equal(masactrl, kv_mix)
    assert not torch.allclose(masactrl, plain, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_outside_the_step_range_equals_the_unpatched_sampler(run, kind):
    prompt = graph(kind, target_cfg=2.0, patches=[injection(V, 3, 10), injection(KV, 3, -1),
                                                  injection(V, -1, -1, "paper default"),
                                                  injection(KV, -1, -1, "paper default")])
    out = run(prompt)
    plain = out["eplain"][0]["samples"]
    assert torch.equal(out["e0"][0]["samples"], plain)  # 3 steps: indices 0..2, all outside [3, 10)
    assert torch.equal(out["e1"][0]["samples"], plain)
    for name in ("e2", "e3"):  # the papers' defaults act (value: step 0; key+value: 4/50*3 -> from step 0)
        edited = out[name][0]["samples"]
        assert torch.isfinite(edited).all() and not torch.allclose(edited, plain, atol=1e-5)


def test_node_error_through_the_executor(run, comfy):
    prompt = graph("flux", patches=[injection(KV, 0, 5, LATER, 1.0)])
    with pytest.raises(comfy.PromptError, match="selects none of this model's 4 attention layers"):
        run(prompt)
