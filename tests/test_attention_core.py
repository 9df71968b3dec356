"""The attention-control core on every tiny model: identity, isolation, call context, chain order, capture."""
import pytest
import torch

from sampling import ksample, latent

KINDS = ["sd15", "sd15_v", "sdxl", "flux", "flux2", "flux_kontext", "chroma"]
# Flux-family joint attention on a 16x16 latent with 8 text tokens: (token grid, text tokens, all tokens). FLUX.2
# uses 1x1 patches and pads the text to 512 tokens (ComfyUI's Flux2.extra_conds); Kontext's 16 reference tokens
# follow the image tokens and are not image tokens of the edit grid.
DIT_GEOMETRY = {"flux": ((8, 8), 8, 72), "flux2": ((16, 16), 512, 768), "flux_kontext": ((8, 8), 8, 88),
                "chroma": ((8, 8), 8, 72)}


@pytest.fixture(scope="module")
def core(pack):
    class Core:
        hooks = pack("attention.hooks")
        controller = pack("attention.controller")
        capture = pack("attention.capture")
        run_state = pack("attention.run_state")
    return Core


def conds(fixtures, text="a red circle", kind=""):
    pos, neg = fixtures.tiny_conditioning(text, kind), fixtures.tiny_conditioning("", kind)
    return pos, neg


class Recorder:
    """Test controller: records what it sees; optionally transforms the output."""
    kinds = ("self", "cross", "joint")

    def __init__(self, log, name="rec", out_fn=None):
        self.log, self.name, self.out_fn = log, name, out_fn

    def wants(self, call):
        return True

    def before(self, call):
        self.log.append(("before", self.name, call.layer, call.kind, tuple(call.q.shape), tuple(call.k.shape),
                         call.grid, call.img, call.txt, tuple(call.roles), tuple(call.conds), call.step))

    def after(self, call, out):
        self.log.append(("after", self.name, call.layer))
        return out if self.out_fn is None else self.out_fn(out)

    def __deepcopy__(self, memo):
        return self


@pytest.mark.parametrize("kind", KINDS)
def test_pass_through_chain_is_bit_identical(core, fixtures, kind):
    model = fixtures.tiny_model(kind)
    pos, neg = conds(fixtures, kind=kind)
    x = latent(kind)
    plain = ksample(model, pos, neg, x)
    patched = core.hooks.with_controller(core.hooks.with_controller(model, core.controller.Controller()),
                                         core.controller.Controller())
    assert torch.equal(ksample(patched, pos, neg, x), plain)


@pytest.mark.parametrize("kind", KINDS)
def test_user_model_is_never_mutated(core, fixtures, kind):
    model = fixtures.tiny_model(kind)
    pos, neg = conds(fixtures, kind=kind)
    x = latent(kind)
    before = ksample(model, pos, neg, x)
    options_before = repr(model.model_options)
    log = []
    patched = core.hooks.with_controller(model, Recorder(log, out_fn=lambda o: o * 0.5))
    changed = ksample(patched, pos, neg, x)
    assert log and not torch.equal(changed, before)
    assert repr(model.model_options) == options_before
    assert core.controller.chain_of(model) == ()
    assert torch.equal(ksample(model, pos, neg, x), before)


@pytest.mark.parametrize("kind", KINDS)
def test_controllers_see_layers_kinds_shapes_and_roles(core, fixtures, kind):
    model = fixtures.tiny_model(kind)
    log = []
    patched = core.hooks.with_controller(model, Recorder(log))
    run = core.run_state.RunState(branches=("source", "target"), per_branch=1, total_steps=3)
    patched.model_options["transformer_options"][core.controller.RUN_KEY] = run
    pos, neg = conds(fixtures, kind=kind)
    ksample(patched, pos, neg, latent(kind, batch=2), steps=3, cfg=2.0)
    seen = [e for e in log if e[0] == "before"]
    kinds = {e[3] for e in seen}
    layers = {e[2] for e in seen}
    if kind in DIT_GEOMETRY:
        assert kinds == {"joint"}
        assert layers == {"double.0", "double.1", "single.0", "single.1"}
        grid_hw, n_txt, total = DIT_GEOMETRY[kind]
        for e in seen:
            q_shape, grid, img, txt = e[4], e[6], e[7], e[8]
            assert grid == grid_hw and (img.start, img.stop) == (n_txt, n_txt + grid_hw[0] * grid_hw[1])
            assert (txt.start, txt.stop) == (0, n_txt) and q_shape[2] == total and q_shape[1] == 4
    else:
        assert kinds == {"self", "cross"}
        assert any(l.startswith("input.") for l in layers) and any(l.startswith("middle.") for l in layers)
        assert any(l.startswith("output.") for l in layers)
        grids = {e[6] for e in seen}
        assert (16, 16) in grids and (8, 8) in grids  # two resolutions
        for e in seen:
            q_shape, k_shape, grid = e[4], e[5], e[6]
            assert q_shape[2] == grid[0] * grid[1]
            assert k_shape[2] == (8 if e[3] == "cross" else q_shape[2])
    for e in seen:  # two branches x (cond, uncond), in whichever chunk order ComfyUI batches them
        roles, cond_flags = e[9], e[10]
        assert len(roles) == 4 and roles.count("source") == 2 and roles.count("target") == 2
        assert cond_flags.count(True) == 2 and cond_flags.count(False) == 2
        assert roles[0] != roles[1] and cond_flags[0] == cond_flags[1]


def test_chain_order_is_honoured(core, fixtures):
    model = fixtures.tiny_model("sd15")
    pos, neg = conds(fixtures)
    x = latent("sd15")
    log = []
    a = Recorder(log, "a", out_fn=lambda o: o * 2.0)
    b = Recorder(log, "b", out_fn=lambda o: o + 1.0)
    ab = core.hooks.with_controller(core.hooks.with_controller(model, a), b)
    ba = core.hooks.with_controller(core.hooks.with_controller(model, b), a)
    assert [c.name for c in core.controller.chain_of(ab)] == ["a", "b"]
    ksample(ab, pos, neg, x, steps=1)
    names = [(e[0], e[1]) for e in log[:4]]
    assert names == [("before", "a"), ("before", "b"), ("after", "a"), ("after", "b")]
    assert not torch.equal(ksample(ab, pos, neg, x, steps=1), ksample(ba, pos, neg, x, steps=1))


@pytest.mark.parametrize("kind", ["sd15", "flux", "flux2", "flux_kontext", "chroma"])
def test_replaced_kv_path_matches_plain_attention(core, fixtures, kind):
    """Replacing K/V by themselves takes the explicit path, which must equal ComfyUI's own attention."""
    class SameKV(core.controller.Controller):
        def before(self, call):
            call.set_qkv(k=call.k.clone(), v=call.v.clone())
    model = fixtures.tiny_model(kind)
    pos, neg = conds(fixtures, kind=kind)
    x = latent(kind)
    plain = ksample(model, pos, neg, x)
    explicit = ksample(core.hooks.with_controller(model, SameKV()), pos, neg, x)
    torch.testing.assert_close(explicit, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux"])
def test_capture_maps_shapes_and_normalisation(core, fixtures, kind):
    model = fixtures.tiny_model(kind)
    capture = core.capture.AttentionCapture("maps")
    patched = core.hooks.with_controller(model, capture)
    run = core.run_state.RunState(total_steps=2)
    patched.model_options["transformer_options"][core.controller.RUN_KEY] = run
    pos, neg = conds(fixtures)
    ksample(patched, pos, neg, latent(kind), steps=2, cfg=1.0)
    maps = core.capture.captured_maps(run, "maps")
    assert maps.shape == (1, 8, 16, 16)  # batch, text tokens, latent grid
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 16, 16), rtol=1e-4, atol=1e-4)
    assert (maps >= 0).all()
    assert set(run.store["maps"]) == {0, 1}
    only_first = core.capture.captured_maps(run, "maps", steps={0})
    assert only_first.shape == maps.shape


def test_unsupported_model_gives_clear_error(core):
    import comfy.model_patcher

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)
    patcher = comfy.model_patcher.ModelPatcher(Holder(), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="Linear.*supported checkpoint|supported checkpoint"):
        core.hooks.with_controller(patcher, core.controller.Controller())
    assert "transformer_options" not in patcher.model_options or not patcher.model_options["transformer_options"]
