"""UnifyEdit (SAPreserveOptimizer): losses on planted maps, gradient modes, identities, memory, graphs."""
import gc
import math
import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def ue(pack):
    class Mods:
        ops = pack("latent_ops.unifyedit")
        record = pack("attention.attention_record")
        hooks = pack("attention.hooks")
        latent_hooks = pack("latent_ops.latent_hooks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        node = pack("nodes.unifyedit")
        scale = pack("latent_ops.loss_scale")
    return Mods


def source_latent(seed=0):
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- losses on planted maps

def test_sap_loss_matches_hand_computation(ue):
    a_src = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                           [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]]])
    a_tgt = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                           [0.25, 0.25, 0.5, 0.0], [0.0, 0.0, 0.5, 0.5]]])
    sa = {"l": (a_src, a_tgt, (2, 2))}
    # squared differences: row0 0.25+0.25, row2 0.0625+0.0625, row3 0.25+0.25
    assert ue.ops.sap_loss(sa).item() == pytest.approx(0.5 + 0.125 + 0.5)
    # region variant: mask keeps tokens 0 and 3 (grid positions (0,0), (1,1)); W = m m^T keeps pairs among {0, 3}
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert ue.ops.sap_loss(sa, mask).item() == pytest.approx(0.25 + 0.25)  # (0,0) and (3,3)
    # two layers: mean over layers
    sa2 = {"l": sa["l"], "m": (a_src, a_src.clone(), (2, 2))}
    assert ue.ops.sap_loss(sa2).item() == pytest.approx((0.5 + 0.125 + 0.5) / 2)


def test_caa_loss_matches_hand_computation(ue):
    maps = torch.tensor([[[0.6, 0.1], [0.2, 0.1], [0.1, 0.3], [0.1, 0.3]]])  # [n=1, L=4, T=2]
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # tokens 0, 1 inside
    # token 0: inside mean 0.4, outside 0.1 -> R 4; token 1: inside 0.1, outside 0.3 -> R 1/3
    r = ue.ops.alignment_ratio(maps, ue.ops.to_tokens(mask, (2, 2)))
    torch.testing.assert_close(r, torch.tensor([[4.0, 1 / 3]]))
    expected = (1 / (1 + 4) + 1 / (1 + 1 / 3)) / 2
    assert ue.ops.caa_loss({"l": (maps, (2, 2))}, mask).item() == pytest.approx(expected)
    # a mask at a finer resolution is area-averaged onto the grid
    fine = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert ue.ops.caa_loss({"l": (maps, (2, 2))}, fine).item() == pytest.approx(expected)
    # raising the ratio lowers the loss
    sharper = maps.clone()
    sharper[0, 0, 1] = 0.9
    assert ue.ops.caa_loss({"l": (sharper, (2, 2))}, mask).item() < expected


def test_mask_from_attention_thresholds_at_the_mean(ue):
    maps = torch.tensor([[[0.9], [0.1], [0.8], [0.0]]])
    mask = ue.ops.mask_from_attention({"l": (maps, (2, 2))}, (2, 2))
    torch.testing.assert_close(mask, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


# ---------------------------------------------------------------- gradient modes and scheduler

def test_scheduler_formula_and_trends(ue):
    b1, b2, k1, k2 = 0.7, 1.3, 3.0, 2.0
    for p in (0.0, 0.25, 0.5, 1.0):
        w_sa, w_ca = ue.ops.schedule_weights(p, b1, b2, k1, k2)
        assert w_sa == pytest.approx(b1 * (1 - math.exp(-k1 * p)) / (1 - math.exp(-k1)))
        assert w_ca == pytest.approx(b2 * math.exp(-k2 * p))
    ws = [ue.ops.schedule_weights(p / 10, b1, b2, k1, k2) for p in range(11)]
    assert ws[0][0] == 0 and ws[-1][0] == pytest.approx(b1) and ws[0][1] == pytest.approx(b2)
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in zip(ws, ws[1:]))
    assert ue.ops.schedule_weights(0.5, 1.0, 1.0, 0.0, 0.0) == (0.5, 1.0)  # k -> 0 limits
    config = ue.ops.UnifyEditConfig(mode="balanced", beta1=b1, beta2=b2, k1=k1, k2=k2, active_steps=5)
    assert config.weights(2) == pytest.approx(ue.ops.schedule_weights(0.5, b1, b2, k1, k2))
    assert ue.ops.UnifyEditConfig(mode="naive", beta1=b1, beta2=b2).weights(3) == (b1, b2)


def test_gradient_modes_combine_as_specified(ue):
    g = torch.Generator().manual_seed(0)
    g_sa, g_ca = torch.randn(2, 4, 3, 3, generator=g) * 10, torch.randn(2, 4, 3, 3, generator=g) * 0.01
    naive = ue.ops.combine(g_sa, g_ca, "naive", 0.5, 2.0)
    torch.testing.assert_close(naive, 0.5 * g_sa + 2.0 * g_ca)
    size = (36 / (4 * 64 * 64)) ** 0.5  # norm of a unit vector of an SD1.5 512 px latent spread over 36 elements
    norm = ue.ops.combine(g_sa, g_ca, "normalized", 1.0, 0.0)
    torch.testing.assert_close(norm.flatten(1).norm(dim=1), torch.full((2,), size))
    for mode in ("normalized", "balanced"):
        both = ue.ops.combine(g_sa, g_ca, mode, 0.5, 2.0)
        n_sa = g_sa.flatten(1).norm(dim=1).view(2, 1, 1, 1)
        n_ca = g_ca.flatten(1).norm(dim=1).view(2, 1, 1, 1)
        torch.testing.assert_close(both, size * (0.5 * g_sa / n_sa + 2.0 * g_ca / n_ca))
    # on an SD1.5 latent at 512 px the normalised gradient has unit norm
    big = torch.randn(1, 4, 64, 64, generator=g)
    torch.testing.assert_close(ue.ops.unit(big).norm(), torch.tensor(1.0))
    # a missing gradient counts as zero; zero stays zero
    torch.testing.assert_close(ue.ops.combine(None, g_ca, "balanced", 1.0, 1.0), ue.ops.unit(g_ca))
    assert ue.ops.unit(torch.zeros(1, 2)).abs().sum() == 0
    with pytest.raises(ValueError, match="gradient_mode"):
        ue.ops.combine(g_sa, g_ca, "other", 1, 1)


# ---------------------------------------------------------------- the optimiser in the edit sampler

def optimised(ue, model, tokens=(1,), mask=None, on_update=None, checkpoint="auto", **config):
    record = ue.record.AttentionRecord(tokens, sa_scales=(2,), ca_scales=(2,), checkpoint=checkpoint)
    config.setdefault("active_steps", 2)
    config.setdefault("iterations", 1)
    hook = ue.ops.UnifyEditHook(ue.ops.UnifyEditConfig(**config), mask, on_update)
    return ue.latent_hooks.with_latent_hook(ue.hooks.with_controller(ue.ops.grad_ready(model), record), hook)


def edit_pair(ue, fixtures, model, inv, cfg=1.0, **kw):
    branches = [ue.edit.Branch("source", fixtures.tiny_conditioning("a black bird"), 1.0),
                ue.edit.Branch("target", fixtures.tiny_conditioning("a white bird"), cfg)]
    if cfg != 1.0:
        kw.setdefault("negative", fixtures.tiny_conditioning(""))
    with torch.inference_mode():  # as under ComfyUI's executor
        return ue.edit.edit(model, inv, branches, **kw)


@pytest.fixture(scope="module")
def sd15(ue, fixtures):
    model = fixtures.tiny_model("sd15")
    with torch.inference_mode():
        inv = ue.inversion.invert(model, source_latent(), fixtures.tiny_conditioning("a black bird"), steps=2)
    out, _ = edit_pair(ue, fixtures, model, inv)
    return model, inv, out


def test_zero_iterations_equals_plain_editing(ue, fixtures, sd15):
    model, inv, plain = sd15
    for patched in (optimised(ue, model, iterations=0),
                    ue.node.SAPreserveOptimizer().patch(model, "#1", "balanced", 1, 1, 3, 3, 0, 2.5, 10, "1/2",
                                                       "1/2", "float32")[0]):
        out, _ = edit_pair(ue, fixtures, patched, inv)
        assert torch.equal(out["target"], plain["target"]) and torch.equal(out["source"], plain["source"])


@pytest.mark.parametrize("mode", ["naive", "normalized", "balanced"])
def test_update_follows_the_mode_and_only_the_target_changes(ue, fixtures, sd15, mode):
    model, inv, plain = sd15
    log = []
    active = 2 if mode == "balanced" else 1
    patched = optimised(ue, model, mode=mode, iterations=2, active_steps=active, beta1=0.8, beta2=1.2, k1=3.0,
                        k2=3.0, step_size=3.0, on_update=log.append)
    out, run = edit_pair(ue, fixtures, patched, inv)
    assert [(e["step"], e["iteration"]) for e in log] == [(0, 0), (0, 1), (1, 0), (1, 1)][:2 * active]
    for e in log:
        assert (e["g_sa"] is None) == (e["w_sa"] == 0) and e["g_ca"] is not None  # a zero weight: no backward
        assert (e["l_sa"] is None if e["w_sa"] == 0 else e["l_sa"] >= 0) and 0 < e["l_ca"] <= 1
        expected_w = ue.ops.schedule_weights(e["step"] / 1, 0.8, 1.2, 3.0, 3.0) if mode == "balanced" else (0.8, 1.2)
        assert (e["w_sa"], e["w_ca"]) == pytest.approx(expected_w)
        direction = ue.ops.combine(e["g_sa"], e["g_ca"], mode, *expected_w)
        torch.testing.assert_close(e["new"], e["z"] - 3.0 * e["sigma"] * direction)
    if mode == "balanced":
        assert log[0]["w_sa"] == 0 and log[-1]["w_sa"] == pytest.approx(0.8)
    torch.testing.assert_close(out["source"], plain["source"], rtol=0, atol=0)  # replayed source untouched
    assert not torch.equal(out["target"], plain["target"])
    assert run.store.get(ue.record.RECORD_KEY) is None


def test_memory_is_released_after_each_step(ue, fixtures, sd15):
    model, inv, _ = sd15
    seen = []

    class Probe(ue.latent_hooks.LatentHook):
        def adjust_latent(self, run, x, sigma, model_fn):
            # model_eval: an evaluation count; the layer names the losses read; the loss scaler (one scalar)
            kept = dict(run.store).keys() - {"source_trajectory", "model_eval", ue.ops.LAYERS_KEY, ue.ops.SCALER_KEY}
            seen.append((kept, x.requires_grad, torch.is_grad_enabled()))
            return x
    def graph_tensors():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)
                    and (o.requires_grad or o.grad_fn is not None) and not isinstance(o, torch.nn.Parameter)}
    before = graph_tensors()
    patched = ue.latent_hooks.with_latent_hook(optimised(ue, model, iterations=2, active_steps=2), Probe())
    out, run = edit_pair(ue, fixtures, patched, inv)
    assert len(seen) == 2 and all(keys == set() and not rg and not ge for keys, rg, ge in seen)
    assert not out["target"].requires_grad
    assert graph_tensors() - before == set()  # nothing holding an autograd graph survives the run
    run.release()
    assert run.store == {}


def test_user_mask_and_regional_sap(ue, fixtures, sd15):
    model, inv, _ = sd15
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    log = []
    edit_pair(ue, fixtures, optimised(ue, model, mask=mask, sap_region="mask", active_steps=1,
                                      on_update=log.append), inv)
    assert log and all(e["g_ca"] is not None for e in log)


# ---------------------------------------------------------------- cost: rows, weights, checkpointing, fp16

def test_optimiser_forwards_only_the_rows_its_losses_need(ue, fixtures, sd15):
    """With CFG on the target the sampler's passes hold 4 rows (source/target x cond/uncond); the optimiser's own
    passes hold one: the source's cond row (once per step, no graph) and the target's cond row (per iteration),
    and they stop after the last layer the losses read."""
    model, inv, _ = sd15
    passes, main = [], []

    class Probe(ue.record.Controller):
        def wants(self, call):
            return call.run is not None
        def after(self, call, out):
            rec = call.run.store.get(ue.record.RECORD_KEY)
            if rec is None:
                main.append(call.q.shape[0])
                return out
            if not passes or passes[-1][0] is not rec:
                passes.append((rec, []))
            passes[-1][1].append((call.q.shape[0], tuple(call.roles), tuple(call.conds), (call.kind, call.layer),
                                  torch.is_grad_enabled()))
            return out
    probe = Probe()
    # the probe first in the chain, so it also sees the call where the record stops the pass
    patched = optimised(ue, ue.hooks.with_controller(model, probe), iterations=2, active_steps=2)
    edit_pair(ue, fixtures, patched, inv, cfg=3.0)
    assert set(main) == {4}
    layers = len(ue.hooks.self_attention_layers(model)) * 2
    modes = [rec["mode"] for rec, _ in passes]
    assert modes == ["target", "target", "source", "target", "target"]  # step 0: preservation weight 0
    for (rec, calls), mode in zip(passes, modes):
        assert {c[0] for c in calls} == {1}
        assert {c[1] for c in calls} == {(mode,)} and {c[2] for c in calls} == {(True,)}
        assert {c[4] for c in calls} == {mode == "target"}
    assert len(passes[0][1]) == layers  # the first pass runs to the end and learns which layers are read
    last = max(i for i, c in enumerate(passes[0][1]) if c[3] in passes[0][0]["seen"])
    assert all(len(calls) == last + 1 < layers for _, calls in passes[1:])


def test_backward_keeps_no_weight_copy_and_no_weight_gradient(ue, fixtures):
    """Weights loaded under inference mode (as under ComfyUI's executor) that would even track gradients: every
    weight autograd keeps for the optimiser's backward is the parameter's own storage (an alias, no copy) and
    tracks no gradient."""
    with torch.inference_mode():
        model = fixtures.tiny_model("sd15")
        inv = ue.inversion.invert(model, source_latent(), fixtures.tiny_conditioning("a black bird"), steps=2)
    params = list(model.model.parameters())
    assert all(p.is_inference() and p.requires_grad for p in params)  # the worst case
    storages = {p.untyped_storage().data_ptr() for p in params}
    shapes = {tuple(p.shape) for p in params if p.ndim >= 2}
    kept = []

    def pack(t):
        if t.ndim >= 2 and tuple(t.shape) in shapes and t.grad_fn is None:
            kept.append((t.untyped_storage().data_ptr() in storages, t.requires_grad))
        return t
    log = []
    patched = optimised(ue, model, iterations=2, active_steps=2, on_update=log.append)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        edit_pair(ue, fixtures, patched, inv)
    assert len(log) == 4 and kept
    assert all(shared and not grad for shared, grad in kept), kept[:5]


def test_checkpointing_gives_the_same_gradients_and_keeps_less(ue, fixtures, sd15):
    model, inv, _ = sd15
    saved = {}
    logs = {}
    for flag in (False, True):
        logs[flag], total = [], [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            edit_pair(ue, fixtures, optimised(ue, model, iterations=2, active_steps=2, checkpoint=flag,
                                              on_update=logs[flag].append), inv)
        saved[flag] = total[0]
    assert len(logs[True]) == len(logs[False]) == 4
    for a, b in zip(logs[False], logs[True]):
        for key in ("g_sa", "g_ca", "new"):
            if a[key] is None:
                assert b[key] is None
                continue
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    assert saved[True] < saved[False]  # the per-head probabilities are recomputed in backward, not kept


def test_auto_checkpointing_is_for_large_maps_only(ue):
    record = ue.record.AttentionRecord((1,))
    small, large = torch.zeros(1, 2, 16, 8), torch.zeros(1, 8, 256, 8)
    assert not record._checkpoints(small, small) and record._checkpoints(large, large)
    assert ue.record.AttentionRecord((1,), checkpoint=True)._checkpoints(small, small)


def underflowing_loss(x, dtype=torch.float16):
    """A float16 network whose input gradient underflows to zero without loss scaling (true size ~1e-9)."""
    h = (x.to(dtype) @ torch.full((8, 8), 0.5, dtype=dtype)).tanh()
    return (h.float() ** 2).sum() * 1e-9


def test_loss_scaler_recovers_float16_gradients_and_skips_overflow(ue):
    LossScaler = ue.scale.LossScaler
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    (reference,) = torch.autograd.grad(underflowing_loss(x, torch.float64), x)  # float64 network: the true gradient
    (plain,) = torch.autograd.grad(underflowing_loss(x), x)
    assert plain.abs().max() == 0  # float16 underflow
    scaler = LossScaler()
    g = scaler.grad(underflowing_loss(x), x)
    torch.testing.assert_close(g, reference.float(), rtol=2e-2, atol=1e-12)
    # overflow: the scaled backward gives inf -> zero gradient (update skipped), scale halves; then it recovers
    big = LossScaler(init_scale=2.0 ** 30, growth_interval=50)
    g = big.grad(underflowing_loss(x) * 1e6, x)
    assert torch.equal(g, torch.zeros_like(g)) and float(big.scale) == 2.0 ** 29
    for _ in range(30):
        g = big.grad(underflowing_loss(x) * 1e6, x)
        if g.abs().max() > 0:
            break
    assert float(big.scale) < 2.0 ** 29
    torch.testing.assert_close(g, reference.float() * 1e6, rtol=2e-2, atol=1e-9)
    # growth: after growth_interval finite gradients the scale doubles
    grow = LossScaler(init_scale=4.0, growth_interval=2)
    for _ in range(2):
        grow.grad(underflowing_loss(x), x, retain=False)
    assert float(grow.scale) == 8.0
    # disabled: a plain gradient
    torch.testing.assert_close(LossScaler(enabled=False).grad(underflowing_loss(x), x), plain)


def test_float16_model_uses_the_loss_scaler(ue, fixtures):
    log = {}
    for dtype in (torch.float32, torch.float16):
        model = fixtures.tiny_model("sd15", dtype=dtype)
        with torch.inference_mode():
            inv = ue.inversion.invert(model, source_latent(), fixtures.tiny_conditioning("a black bird"), steps=2)
        log[dtype] = []
        out, _ = edit_pair(ue, fixtures, optimised(ue, model, iterations=2, active_steps=2,
                                                   on_update=log[dtype].append), inv)
        assert torch.isfinite(out["target"]).all()
    assert len(log[torch.float16]) == 4 and all(e["loss_scale"] is not None for e in log[torch.float16])
    assert all(e["loss_scale"] is None for e in log[torch.float32])
    assert any(e["direction"].abs().max() > 0 for e in log[torch.float16])


# ---------------------------------------------------------------- node inputs and graphs

class FakeClip:
    """Tokenizes like SD's CLIP: start token, one id per word piece, end token, padding."""
    vocab = {"a": 10, "white": 11, "bird": 12, "sea": 13, "gull": 14}

    def tokenize(self, text):
        ids = [1]
        for w in text.lower().split():
            ids += [self.vocab[w]] if w in self.vocab else [13, 14] if w == "seagull" else [99]
        ids += [2] + [0] * (8 - len(ids) - 1)
        return {"l": [[(i, 1.0) for i in ids]]}


def test_edit_tokens_from_words_and_clear_errors(ue):
    parse = ue.node.parse_edit_tokens
    assert parse("white", FakeClip(), "a white bird") == [2]
    assert parse("white, bird", FakeClip(), "a white bird") == [2, 3]
    assert parse("seagull", FakeClip(), "a seagull") == [2, 3]  # a word of two tokens
    assert parse("#3, #1") == [1, 3]
    with pytest.raises(ValueError, match="'red' is not in the target prompt"):
        parse("red", FakeClip(), "a white bird")
    with pytest.raises(ValueError, match="connect the CLIP"):
        parse("white")
    with pytest.raises(ValueError, match="edit_tokens"):
        parse("  ")


def test_node_rejects_empty_mask_and_layers_that_match_nothing(ue, fixtures, sd15):
    model, inv, _ = sd15
    node = ue.node.SAPreserveOptimizer()
    args = (model, "#1", "balanced", 1, 1, 3, 3, 1, 2.5, 2, "1/8", "1/8", "float32")
    with pytest.raises(ValueError, match="mask"):
        node.patch(*args, mask=torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="no attention layer matched"):
        edit_pair(ue, fixtures, node.patch(*args)[0], inv)


def graph(kind):
    prompt = {
        "m": {"class_type": "TinyTestModel", "inputs": {"kind": kind, "seed": 0}},
        "src": {"class_type": "TinyTestConditioning", "inputs": {"text": "a black bird"}},
        "tgt": {"class_type": "TinyTestConditioning", "inputs": {"text": "a white bird"}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "inv": {"class_type": "AttentionEditInvert", "inputs": {"model": ["m", 0], "latent": ["lat", 0],
                "positive": ["src", 0], "steps": 2, "scheduler": "simple", "solver": "auto", "cfg": 1.0}},
        "opt": {"class_type": "AttentionEditSAPreserveOptimizer", "inputs": {
            "model": ["m", 0], "edit_tokens": "#1", "gradient_mode": "balanced", "beta1": 1.0, "beta2": 1.0,
            "k1": 3.0, "k2": 3.0, "iterations": 1, "step_size": 2.5, "active_steps": 2,
            "sa_layers": "1/2", "ca_layers": "1/2", "attention_precision": "float32"}},
        "ed": {"class_type": "AttentionEditSampler", "inputs": {"model": ["opt", 0], "inversion": ["inv", 0],
               "target_positive": ["tgt", 0], "target_cfg": 1.0, "source_mode": "replay", "source_cfg": 1.0,
               "start_step": 0}},
    }
    return prompt


def test_graph_invert_optimize_edit_runs_through_the_executor(run):
    out = run(graph("sd15"))
    edited, source = out["ed"][0]["samples"], out["ed"][1]["samples"]
    assert edited.shape == (1, 4, 16, 16)
    torch.testing.assert_close(source, torch.zeros_like(source), atol=1e-5, rtol=0)  # replayed source untouched
    assert torch.isfinite(edited).all()


def test_flux_is_refused_with_a_clear_error(ue, fixtures):
    """ComfyUI's Flux blocks add residuals in place, so no gradient reaches the latent: refused up front."""
    with pytest.raises(ValueError, match="Flux.*in place.*U-Net"):
        ue.node.SAPreserveOptimizer().patch(fixtures.tiny_model("flux"), "#1", "balanced", 1, 1, 3, 3, 1, 2.5, 2,
                                            "1/2", "1/2", "float32")


# ---------------------------------------------------------------- benchmark sweep configurations

def test_sweep_variants_are_valid_graphs_with_their_overrides(ue, comfy):
    """benchmarks/unifyedit_sweep.py: every variant is the benchmark's UnifyEdit graph with only its listed node
    inputs changed, and ComfyUI's validation (types, min/max) accepts it; the defaults variant is exactly the
    benchmark's 'unifyedit' method."""
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root / "benchmarks"), str(root / "workflows")]
    import execution
    import edit_benchmark
    import edit_methods
    import unifyedit_sweep as sweep
    from embedded.edit_suite import benchmark_cases
    assert len(sweep.GRID) <= 8
    assert {c["gradient_mode"] for c in sweep.MODES.values()} == set(ue.ops.MODES)
    assert all(sweep.CONFIGS[n]["gradient_mode"] == "balanced" for n in sweep.GRID)
    case = benchmark_cases(0)[0]
    edit_benchmark.write_case_images([case])
    image = edit_benchmark.case_image_name(case)
    defaults = sweep.settings({})
    builders = sweep.builders(list(sweep.BASELINES) + list(sweep.CONFIGS))
    for name, build in builders.items():
        prompt, edited, _ = build("unet", case, image, 6)
        valid = comfy._state["loop"].run_until_complete(execution.validate_prompt(name, prompt, None))
        assert valid[0], (name, valid[1], valid[3])
        nodes = [n["inputs"] for n in prompt.values() if n["class_type"] == sweep.NODE]
        if name in sweep.BASELINES:
            assert not nodes
            continue
        assert len(nodes) == 1 and nodes[0]["edit_tokens"] == case.target_word
        changed = {k for k, v in defaults.items() if nodes[0][k] != v}
        assert changed == {k for k, v in sweep.CONFIGS[name].items() if defaults[k] != v}, name
        assert all(nodes[0][k] == v for k, v in sweep.CONFIGS[name].items())
    assert builders["ue_balanced"]("unet", case, image, 6) == edit_methods.build("unifyedit", "unet", case, image, 6)
    with pytest.raises(ValueError, match="not inputs"):
        sweep.variant({"steps": 3})
    with pytest.raises(ValueError, match="--configs"):
        sweep.builders(["ue_fast"])
