"""Invert and the edit sampler: exactness on a closed-form denoiser, replay, roles, graphs, clear errors."""
import pytest
import torch

from gaussian import MU, S, gaussian_model
from test_attention_core import Recorder
from graphs import tiny_inputs

FLOW_SOLVERS = ["euler", "rf_solver", "fireflow"]


@pytest.fixture(scope="module")
def ops(pack):
    class Ops:
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        hooks = pack("attention.hooks")
    return Ops


def source_latent(seed=0):
    return MU + S * torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def round_trip_error(ops, model, x0, pos, steps, solver):
    inv = ops.inversion.invert(model, x0, pos, steps=steps, solver=solver)
    out, _ = ops.edit.edit(model, inv, [ops.edit.Branch("target", pos, 1.0)])
    return (out["target"] - x0).abs().mean().item()


@pytest.mark.parametrize("kind,solver", [("sd15", "ddim"), ("sd15_v", "ddim")] + [("flux", s) for s in FLOW_SOLVERS])
def test_round_trip_error_shrinks_with_steps(ops, fixtures, kind, solver):
    model = gaussian_model(fixtures.tiny_model(kind), flow=kind == "flux")
    x0, pos = source_latent(), fixtures.tiny_conditioning("a red circle")
    errors = [round_trip_error(ops, model, x0, pos, steps, solver) for steps in (4, 12, 36)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.6 * errors[0]


def test_second_order_flow_solvers_beat_euler_at_equal_evaluations(ops, fixtures):
    model = gaussian_model(fixtures.tiny_model("flux"), flow=True)
    x0, pos = source_latent(1), fixtures.tiny_conditioning("a")
    euler = round_trip_error(ops, model, x0, pos, 16, "euler")        # 16 evaluations each way
    rf_solver = round_trip_error(ops, model, x0, pos, 8, "rf_solver")  # 2 per step
    fireflow = round_trip_error(ops, model, x0, pos, 15, "fireflow")  # 1 per step + 1
    assert rf_solver < 0.2 * euler and fireflow < 0.2 * euler, (euler, rf_solver, fireflow)


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux"])
def test_source_replay_reproduces_the_source_latent(ops, fixtures, kind):
    model = fixtures.tiny_model(kind)
    x0, pos = source_latent(2), fixtures.tiny_conditioning("a blue square")
    inv = ops.inversion.invert(model, x0, pos, steps=4)
    out, _ = ops.edit.edit(model, inv, [ops.edit.Branch("source", pos, 1.0),
                                        ops.edit.Branch("target", fixtures.tiny_conditioning("a red square"), 1.0)])
    torch.testing.assert_close(out["source"], x0, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["target"], x0, atol=1e-3)


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_target_with_source_prompt_reconstructs_the_source(ops, fixtures, kind):
    flow = kind == "flux"
    model = gaussian_model(fixtures.tiny_model(kind), flow=flow)
    x0, pos = source_latent(3), fixtures.tiny_conditioning("a green circle")
    inv = ops.inversion.invert(model, x0, pos, steps=30, solver="rf_solver" if flow else "auto")
    out, _ = ops.edit.edit(model, inv, [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", pos, 1.0)],
                           source_mode="reconstruct")
    assert torch.equal(out["target"], out["source"])
    assert (out["target"] - x0).abs().mean() < (0.01 if flow else 0.2)
    # and on a real (random) network the target with the source prompt equals the free reconstruction
    net = fixtures.tiny_model(kind)
    inv = ops.inversion.invert(net, x0, pos, steps=3)
    out, _ = ops.edit.edit(net, inv, [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", pos, 1.0)],
                           source_mode="reconstruct")
    torch.testing.assert_close(out["target"], out["source"])


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_controllers_receive_branch_roles(ops, fixtures, kind, cfg):
    log = []
    model = ops.hooks.with_controller(fixtures.tiny_model(kind), Recorder(log))
    pos, neg = fixtures.tiny_conditioning("a cat"), fixtures.tiny_conditioning("")
    x0 = torch.cat([source_latent(4), source_latent(5)])  # latent batch 2
    inv = ops.inversion.invert(model, x0, pos, steps=2)
    log.clear()
    branches = [ops.edit.Branch("source", pos, 1.0), ops.edit.Branch("target", fixtures.tiny_conditioning("a dog"), cfg),
                ops.edit.Branch("aux", neg, 1.0)]
    ops.edit.edit(model, inv, branches, negative=neg)
    calls = [e for e in log if e[0] == "before"]
    assert calls
    for e in calls:
        roles, conds, step = e[9], e[10], e[11]
        if cfg == 1.0:
            assert roles == ("source",) * 2 + ("target",) * 2 + ("aux",) * 2 and all(conds)
        else:
            assert len(roles) == 12 and sorted(set(conds)) == [False, True]
            for chunk in (roles[:6], roles[6:]):
                assert chunk == ("source",) * 2 + ("target",) * 2 + ("aux",) * 2
        assert step in (0, 1)


@pytest.mark.parametrize("kind", ["sd15", "sd15_v", "sdxl", "flux"])
def test_invert_and_edit_graph_runs(run, kind):
    prompt = {
        **tiny_inputs(kind),
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 3, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}},
        "7": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["1", 0], "inversion": ["6", 0], "target_positive": ["3", 0], "target_cfg": 2.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["4", 0]}},
    }
    out = run(prompt)
    edited, source = out["7"][0]["samples"], out["7"][1]["samples"]
    assert edited.shape == source.shape == (1, 4, 16, 16)
    torch.testing.assert_close(source, torch.zeros_like(source), atol=1e-5, rtol=0)
    assert out["6"][1]["samples"].abs().sum() > 0


def test_inversion_with_another_model_is_refused(ops, fixtures):
    pos = fixtures.tiny_conditioning("a")
    inv = ops.inversion.invert(fixtures.tiny_model("sd15"), source_latent(), pos, steps=2)
    with pytest.raises(ValueError, match="inversion: it was made with another model"):
        ops.edit.edit(fixtures.tiny_model("sd15"), inv, [ops.edit.Branch("target", pos, 1.0)])


def test_step_mismatches_are_refused(ops, fixtures, run):
    model = fixtures.tiny_model("sd15")
    pos = fixtures.tiny_conditioning("a")
    inv = ops.inversion.invert(model, source_latent(), pos, steps=3)
    with pytest.raises(ValueError, match=r"start_step must be in \[0, 2\]"):
        ops.edit.edit(model, inv, [ops.edit.Branch("target", pos, 1.0)], start_step=3)
    with pytest.raises(ValueError, match="negative"):
        ops.edit.edit(model, inv, [ops.edit.Branch("target", pos, 3.0)])
    prompt = {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 3, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0, "capture_steps": "0-5"}},
    }
    with pytest.raises(Exception, match="capture_steps: step indices must lie in 0..2"):
        run(prompt)


def test_solver_must_fit_the_model(ops, fixtures):
    pos = fixtures.tiny_conditioning("a")
    with pytest.raises(ValueError, match="solver: rf_solver is for flow models"):
        ops.inversion.invert(fixtures.tiny_model("sd15"), source_latent(), pos, steps=2, solver="rf_solver")
    with pytest.raises(ValueError, match="solver: ddim is for eps/v"):
        ops.inversion.invert(fixtures.tiny_model("flux"), source_latent(), pos, steps=2, solver="ddim")


def test_invert_caches_only_requested_kv_and_maps(run):
    prompt = {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": "flux", "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a red circle"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 4, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0, "capture_steps": "0-1", "cache_kv": True, "cache_layers": "double.1, single.0",
            "capture_attention": True, "cache_dtype": "bfloat16", "cache_device": "cpu"}},
    }
    inversion = run(prompt)["6"][0]
    cache = inversion.store["kv_cache"]
    assert set(cache) == {(s, l) for s in (0, 1) for l in ("double.1", "single.0")}
    k, v = cache[(0, "double.1")]
    assert k.dtype == torch.bfloat16 and k.device.type == "cpu" and k.shape == (1, 4, 64, 16) == v.shape
    maps = inversion.store["attention_maps"]
    assert set(maps) == {0, 1} and maps[0][0].shape == (1, 8, 16, 16)


def test_interruption_is_honoured(ops, fixtures):
    import comfy.model_management
    import nodes
    pos = fixtures.tiny_conditioning("a")
    nodes.interrupt_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            ops.inversion.invert(fixtures.tiny_model("sd15"), source_latent(), pos, steps=3)
    finally:
        nodes.interrupt_processing(False)


def test_start_latent_of_another_resolution_is_refused(ops, fixtures):
    model = fixtures.tiny_model("sd15")
    pos = fixtures.tiny_conditioning("a")
    inv = ops.inversion.invert(model, source_latent(), pos, steps=2)
    wrong = torch.zeros(1, 4, 24, 24)
    with pytest.raises(ValueError, match=r"target start latent has shape \(1, 4, 24, 24\), the inversion \(1, 4, 16, 16\)"):
        ops.edit.edit(model, inv, [ops.edit.Branch("target", pos, 1.0, start=wrong)])
