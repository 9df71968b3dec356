"""Stock samplers: the Edit Guider under SamplerCustomAdvanced with any SAMPLER, Invert's NOISE and SIGMAS for
stock sampling, a warning when a technique MODEL is sampled without the pack's samplers, latent previews, and
outputs on ComfyUI's intermediate device."""
import logging

import pytest
import torch

from gaussian import MU, S, gaussian_model
from graphs import tiny_inputs


@pytest.fixture(scope="module")
def ops(pack):
    class Ops:
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        guider = pack("latent_ops.edit_guider")
        run_check = pack("attention.run_check")
    return Ops


def edit_graph(kind, sampler="euler", target="3", technique=None, steps=3, drift=0.0, start_step=0):
    """Invert -> Edit Sampler (node 7) and the same inputs through Edit Guider + SamplerCustomAdvanced (node 11);
    node 12: SolidMask; technique: None, 'kv_mix' or 'keep_outside' on the MODEL (node 13)."""
    prompt = {
        **tiny_inputs(kind),
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": steps, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "12": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
    }
    model = ["1", 0]
    if technique == "kv_mix":
        prompt["13"] = {"class_type": "AttentionEditKVMix", "inputs": {
            "model": model, "delta": 0.5, "inject_steps": 2, "edit_type": "change", "kv_source": "batch",
            "mask": ["12", 0]}}
        model = ["13", 0]
    elif technique == "keep_outside":
        prompt["12"]["inputs"]["value"] = 0.0
        prompt["13"] = {"class_type": "AttentionEditKeepOutsideMask", "inputs": {
            "model": model, "mask": ["12", 0], "start_step": 0, "end_step": -1, "grow": 0, "feather": 0}}
        model = ["13", 0]
    edit_inputs = {"model": model, "inversion": ["6", 0], "target_positive": [target, 0], "target_cfg": 2.0,
                   "source_mode": "replay", "source_cfg": 1.0, "start_step": start_step, "negative": ["4", 0],
                   "drift_correction": drift}
    prompt.update({
        "7": {"class_type": "AttentionEditSampler", "inputs": dict(edit_inputs)},
        "8": {"class_type": "AttentionEditGuider", "inputs": dict(edit_inputs)},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "10": {"class_type": "DisableNoise", "inputs": {}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["10", 0], "guider": ["8", 0], "sampler": ["9", 0], "sigmas": ["8", 1],
            "latent_image": ["5", 0]}},
    })
    return prompt


@pytest.mark.parametrize("kind,technique,drift", [("sd15", None, 0.0), ("flux", None, 0.0),
                                                  ("sd15", "kv_mix", 0.5), ("flux", "keep_outside", 0.0)])
def test_guider_with_euler_equals_the_edit_sampler(run, kind, technique, drift):
    out = run(edit_graph(kind, "euler", technique=technique, drift=drift))
    guided, sampled, source = out["11"][0]["samples"], out["7"][0]["samples"], out["7"][1]["samples"]
    torch.testing.assert_close(guided, sampled, rtol=1e-4, atol=1e-4)
    if technique == "keep_outside":  # an all-zeros mask keeps the source everywhere
        torch.testing.assert_close(guided, source, rtol=1e-4, atol=1e-4)
    else:
        assert (guided - source).abs().mean() > 1e-2  # an edit: the target differs from the source


def test_guider_start_step_and_denoised_output(run):
    out = run(edit_graph("sd15", "euler", steps=4, start_step=1))
    torch.testing.assert_close(out["11"][0]["samples"], out["7"][0]["samples"], rtol=1e-4, atol=1e-4)
    assert out["8"][1].shape == (4,)  # the inversion's 5 sigmas from step 1
    assert out["11"][1]["samples"].shape == out["11"][0]["samples"].shape == (1, 4, 16, 16)


def source_latent(seed=0):
    return MU + S * torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_guider_with_euler_equals_the_edit_sampler_with_latent_hooks(ops, fixtures, pack):
    """Uniform maps on an aux branch + the adaptive Blend (a denoised hook), and UnifyEdit's optimiser (a latent
    hook with its own model evaluations): the guider under euler gives the Edit Sampler's target."""
    import math
    from types import SimpleNamespace

    from test_unifyedit import optimised
    hooks, latent_hooks = pack("attention.hooks"), pack("latent_ops.latent_hooks")
    uniform, blend = pack("attention.uniform"), pack("latent_ops.blend")
    base = fixtures.tiny_model("sd15")
    pos, other, empty = (fixtures.tiny_conditioning(t) for t in ("a black bird", "a white bird", ""))
    uam = latent_hooks.with_latent_hook(
        hooks.with_controller(base, uniform.UniformAttention("aux")),
        blend.BlendHook("adaptive", "target", "aux", quantile=0.5, threshold_scale=2.0, gate=math.inf))

    modules = SimpleNamespace(record=pack("attention.attention_record"), hooks=hooks, latent_hooks=latent_hooks,
                              ops=pack("latent_ops.unifyedit"))
    unify = optimised(modules, base, iterations=1, active_steps=2)
    for model, aux in ((uam, [ops.edit.Branch("aux", empty, 1.0)]), (unify, [])):
        with torch.inference_mode():
            inv = ops.inversion.invert(model, source_latent(2), pos, steps=3)
            branches = [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", other, 1.0)] + aux
            expected, _ = ops.edit.edit(model, inv, branches)
            plain, _ = ops.edit.edit(base, ops.inversion.invert(base, source_latent(2), pos, steps=3), branches)
            guided = guided_edit(ops, model, inv, branches, "euler")
        torch.testing.assert_close(guided, expected["target"], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(guided, plain["target"], atol=1e-3)  # the technique acted


def guided_edit(ops, model, inv, branches, sampler_name, **kwargs):
    """What SamplerCustomAdvanced does with the Edit Guider: returns the target latent."""
    import comfy.samplers
    guider = ops.guider.EditGuider(ops.edit.EditRun(model, inv, branches, **kwargs))
    sigmas = guider.schedule()
    latent = torch.zeros(inv.shape)
    return guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                         seed=0)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "dpm_2"])
def test_any_sampler_reconstructs_and_edits(ops, fixtures, kind, sampler):
    """Closed-form denoiser, target prompt = source prompt, no technique: the target reconstructs the source. The
    exact inversion is exact for the Euler/DDIM step, so euler lands on the source as the Edit Sampler does; other
    samplers integrate the same ODE with their own discretisation error (measured 0.02-0.05 at 30 steps, 0.7 from
    fresh noise). On a random network another target prompt changes the result."""
    flow = kind == "flux"
    model = gaussian_model(fixtures.tiny_model(kind), flow=flow)
    x0, pos = source_latent(1), fixtures.tiny_conditioning("a green circle")
    inv = ops.inversion.invert(model, x0, pos, steps=30, exact_iterations=2)
    branches = [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", pos, 1.0)]
    errors = {s: float((guided_edit(ops, model, inv, branches, s) - x0).abs().mean()) for s in ("euler", sampler)}
    assert errors["euler"] < 1e-3 and errors[sampler] < 0.07, errors
    net = fixtures.tiny_model(kind)
    inv = ops.inversion.invert(net, x0, pos, steps=4)
    other = fixtures.tiny_conditioning("a red square")
    edited = guided_edit(ops, net, inv, [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", other, 1.0)],
                         sampler)
    same = guided_edit(ops, net, inv, branches, sampler)
    assert edited.isfinite().all() and (edited - same).abs().mean() > 1e-2


def test_guider_refuses_another_schedule_and_a_noise_mask(ops, fixtures):
    import comfy.samplers
    model = fixtures.tiny_model("sd15")
    pos = fixtures.tiny_conditioning("a")
    inv = ops.inversion.invert(model, source_latent(), pos, steps=3)
    guider = ops.guider.EditGuider(ops.edit.EditRun(model, inv, [ops.edit.Branch("target", pos, 1.0)]))
    latent, euler = torch.zeros(inv.shape), comfy.samplers.sampler_object("euler")
    other = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 3)
    with pytest.raises(ValueError, match="sigmas: the Edit Guider follows the inversion's schedule"):
        guider.sample(latent, latent, euler, other)
    with pytest.raises(ValueError, match="noise mask"):
        guider.sample(latent, latent, euler, guider.schedule(), denoise_mask=torch.ones(1, 1, 16, 16))


# ----- Invert's NOISE and SIGMAS with stock samplers -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_inverted_noise_with_stock_sampling(run, kind):
    """SamplerCustomAdvanced + CFGGuider + Invert's noise_source / noise LATENT / sigmas regenerates what the Edit
    Sampler's free reconstruction gives (eps/v and flow). KSamplerAdvanced without added noise does the same on
    eps/v models; on flow models it starts from zeros (ComfyUI scales the latent by 1 - sigma = 0), as the noise
    output's tooltip says."""
    prompt = {
        **tiny_inputs(kind),
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 3, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "7": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["1", 0], "inversion": ["6", 0], "target_positive": ["3", 0], "target_cfg": 1.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 1.0}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["6", 2], "guider": ["8", 0], "sampler": ["9", 0], "sigmas": ["6", 3],
            "latent_image": ["6", 1]}},
        "12": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": "disable", "noise_seed": 0, "steps": 3, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["6", 1], "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
    }
    out = run(prompt)
    edited = out["7"][0]["samples"]
    torch.testing.assert_close(out["11"][0]["samples"], edited, rtol=1e-4, atol=1e-4)
    if kind == "flux":
        assert (out["12"][0]["samples"] - edited).abs().mean() > 1e-2
    else:
        torch.testing.assert_close(out["12"][0]["samples"], edited, rtol=1e-4, atol=1e-4)


def test_inverted_noise_needs_its_latent(run):
    prompt = {
        **tiny_inputs("flux"),
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 2, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 1.0}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["6", 2], "guider": ["8", 0], "sampler": ["9", 0], "sigmas": ["6", 3],
            "latent_image": ["5", 0]}},
    }
    with pytest.raises(Exception, match="noise_source: connect the same Invert node's noise LATENT"):
        run(prompt)


# ----- warning when sampled without the pack's run state -----------------------------------------------------

def ksampler_graph(kind="sd15"):
    prompt = {
        **tiny_inputs(kind),
        "12": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "13": {"class_type": "AttentionEditKVMix", "inputs": {
            "model": ["1", 0], "delta": 0.5, "inject_steps": 2, "edit_type": "change", "kv_source": "batch",
            "mask": ["12", 0]}},
        "14": {"class_type": "AttentionEditKeepOutsideMask", "inputs": {
            "model": ["13", 0], "mask": ["12", 0], "start_step": 0, "end_step": -1, "grow": 0, "feather": 0}},
        "15": {"class_type": "KSampler", "inputs": {
            "model": ["14", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 1,
            "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }
    return prompt


def test_technique_with_ksampler_warns_once(run, caplog):
    with caplog.at_level(logging.WARNING):
        run(ksampler_graph())
    warnings = [r.getMessage() for r in caplog.records if "act only inside the pack's samplers" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "KV-Mix, Keep Outside Mask" in warnings[0] and "Edit Guider" in warnings[0]


def test_pack_samplers_and_pass_through_models_do_not_warn(run, caplog):
    prompt = edit_graph("sd15", technique="kv_mix")
    prompt["16"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 1,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt["17"] = {"class_type": "AttentionEditUniformAttnPatch", "inputs": {
        "model": ["1", 0], "branches": "all", "during_inversion": True}}
    prompt["18"] = dict(prompt["16"], inputs=dict(prompt["16"]["inputs"], model=["17", 0]))
    with caplog.at_level(logging.WARNING):
        run(prompt)
    assert not [r for r in caplog.records if "act only inside the pack's samplers" in r.getMessage()]


def test_warning_reaches_the_web_ui():
    """The warning is shown under the KSampler node in the web UI: a real server sends it over the websocket."""
    import asyncio
    import json
    import struct
    import uuid

    import aiohttp
    from harness.server import ComfyServer
    from test_server import FIXTURE_NODES

    async def listen(server, prompt):
        client = uuid.uuid4().hex
        texts = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={client}") as ws:
                prompt_id = server.queue(prompt, client_id=client)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", msg.data[:4])[0] == 3:
                        n = struct.unpack(">I", msg.data[4:8])[0]
                        texts.append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode()))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        if data["type"] == "executing" and data["data"].get("node") is None \
                                and data["data"].get("prompt_id") == prompt_id:
                            return texts
                        if data["type"] == "execution_error":
                            raise AssertionError(data)
        return texts

    with ComfyServer(extra_nodes=[FIXTURE_NODES], threads=1) as server:
        prompt = ksampler_graph()
        prompt["16"] = {"class_type": "TestSink", "inputs": {"value": ["15", 0]}}
        texts = asyncio.run(asyncio.wait_for(listen(server, prompt), 120))
    shown = [(node, text) for node, text in texts if "act only inside the pack's samplers" in text]
    assert len(shown) == 1 and shown[0][0] == "15", texts


# ----- previews, interruption, devices --------------------------------------------------------------------------

def test_edit_sampler_guider_and_flowedit_show_latent_previews(ops, fixtures, pack):
    """ComfyUI's own previewer (here Latent2RGB) gets each step's latent, as under KSampler. The embedded latent
    format has no RGB factors (no Latent2RGB preview, for KSampler too), so the test model gets some."""
    import comfy.samplers
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, SamplerCustomAdvanced
    seen = []

    def hook(value, total, preview, node_id=None, prompt_id=None):
        seen.append((value, total, preview is not None))
    model = fixtures.tiny_model("sd15")
    model.model.latent_format.latent_rgb_factors = [[0.3, 0.2, 0.1]] * 4
    pos, other = fixtures.tiny_conditioning("a"), fixtures.tiny_conditioning("b")
    x0 = source_latent()
    previous_method, previous_hook = args.preview_method, comfy.utils.PROGRESS_BAR_HOOK
    args.preview_method = LatentPreviewMethod.Latent2RGB
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        inv = ops.inversion.invert(model, x0, pos, steps=3)
        branches = [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", other, 1.0)]
        ops.edit.edit(model, inv, branches)
        edit_sampler = len([s for s in seen if s[2]])
        guider = ops.guider.EditGuider(ops.edit.EditRun(model, inv, branches))
        SamplerCustomAdvanced.execute(Noise_EmptyNoise(), guider, comfy.samplers.sampler_object("euler"),
                                      guider.schedule(), {"samples": x0})
        guided = len([s for s in seen if s[2]]) - edit_sampler
        pack("latent_ops.flowedit").flow_edit(model, x0, pos, other, steps=4, n_max=3, source_cfg=1.0, target_cfg=1.0)
        flowedit = len([s for s in seen if s[2]]) - edit_sampler - guided
    finally:
        args.preview_method = previous_method
        comfy.utils.set_progress_bar_global_hook(previous_hook)
    assert (edit_sampler, guided, flowedit) == (3, 3, 3), seen


def test_outputs_on_the_intermediate_device(run):
    import comfy.model_management
    prompt = edit_graph("sd15")
    prompt["20"] = {"class_type": "AttentionEditFlowEdit", "inputs": {
        "model": ["1", 0], "latent": ["5", 0], "source_positive": ["2", 0], "target_positive": ["3", 0],
        "steps": 3, "scheduler": "simple", "n_max": 2, "n_min": 0, "n_avg": 1, "source_cfg": 1.0,
        "target_cfg": 1.0, "seed": 0}}
    out = run(prompt)
    keep = comfy.model_management.intermediate_device()
    latents = [out["7"][i]["samples"] for i in range(3)] + [out["6"][1]["samples"], out["20"][0]["samples"],
                                                           out["11"][0]["samples"]]
    inversion = out["6"][0]
    assert all(t.device == keep for t in latents + inversion.trajectory)
