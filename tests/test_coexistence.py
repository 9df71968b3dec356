"""Working beside the nodes users already have: ComfyUI's PerturbedAttentionGuidance, SelfAttentionGuidance and
FreeU_V2, an IP-Adapter-style attn2 patch (block-level key on SD1.5, 3-tuple key and `.add` on SDXL) and a later
Flux attention override, each applied before and after a pack node; and techniques that read other rows (KV-Mix,
source injection) with cond and uncond forced into separate model calls."""
import pytest
import torch

from sampling import ksample, latent


@pytest.fixture(scope="module")
def co(pack):
    class Co:
        hooks = pack("attention.hooks")
        controller = pack("attention.controller")
        kv_mix = pack("attention.kv_mix")
        injection = pack("attention.source_injection")
        cpam = pack("attention.cpam")
        cpam_masks = pack("latent_ops.cpam_masks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")

    class Tweak(Co.controller.Controller):
        """A technique for these tests: sharper keys, damped values in every self / joint attention call."""
        kinds = ("self", "joint")

        def before(self, call):
            call.set_qkv(k=call.k * 1.5, v=call.v * 0.8)
    Co.Tweak = Tweak
    return Co


def conds(fixtures):
    return fixtures.tiny_conditioning("a red circle"), fixtures.tiny_conditioning("")


# ----- the other nodes ------------------------------------------------------------------------------------------

def pag(model):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    return PerturbedAttentionGuidance.execute(model, 3.0)[0]


def sag(model):
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    return SelfAttentionGuidance.execute(model, 0.5, 2.0)[0]


def freeu(model):
    from comfy_extras.nodes_freelunch import FreeU_V2
    return FreeU_V2().patch(model, 1.3, 1.4, 0.9, 0.2)[0]


class IPStyleReplace:
    """Behaves like an IP-Adapter attn2 replace patch: plain cross-attention plus the residual of each callback
    added with `.add`, within its sigma range (written for this test)."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [(callback, kwargs)]

    def add(self, callback, **kwargs):
        self.callbacks.append((callback, kwargs))

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = float(extra_options["sigmas"].flatten()[0])
        for callback, kwargs in self.callbacks:
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)


def image_prompt_attention(out, q, k, v, extra_options, weight=1.0, seed=0, **kwargs):
    """The residual: attention of the queries to 4 fixed 'image prompt' tokens."""
    from comfy.ldm.modules.attention import optimized_attention
    tokens = torch.randn(1, 4, q.shape[-1], generator=torch.Generator().manual_seed(seed + q.shape[-1]))
    tokens = tokens.to(q).expand(q.shape[0], -1, -1)
    return optimized_attention(q, tokens, tokens, extra_options["n_heads"]) * weight


def transformer_keys(model, block_level):
    """Every U-Net transformer block's replace-patch key: (block, number) or (block, number, index)."""
    from comfy.ldm.modules.attention import SpatialTransformer
    dm = model.model.diffusion_model
    keys = []
    for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
        for number, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(name, number)] if block_level else \
                        [(name, number, i) for i in range(len(layer.transformer_blocks))]
    return keys


def ip_adapter_style(model, block_level, weight=0.7, seed=0):
    """Applies the patch the way IP-Adapter nodes do: a new patch at a free key, `.add` on the one already there."""
    m = model.clone()
    keys = transformer_keys(m, block_level)
    kwargs = dict(weight=weight, seed=seed, sigma_start=1e9, sigma_end=0.0)
    for key in keys:
        to = m.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
        if key not in to["patches_replace"]["attn2"]:
            to["patches_replace"]["attn2"][key] = IPStyleReplace(image_prompt_attention, **kwargs)
            m.model_options["transformer_options"] = to
        else:
            to["patches_replace"]["attn2"][key].add(image_prompt_attention, **kwargs)
    return m


def damped_attention(func, *args, **kwargs):
    """An attention override like the ones sage-attention patch nodes set (here: a visible effect)."""
    return func(*args, **kwargs) * 0.9


def attention_override(model):
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = damped_attention
    return m


def chaining_override(model):
    """An override node that keeps the override it found (maybe the pack's) and calls it inside its own."""
    m = model.clone()
    options = m.model_options["transformer_options"]
    previous = options.get("optimized_attention_override")

    def chained(func, *args, **kwargs):
        return (previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)) * 0.9
    options["optimized_attention_override"] = chained
    return m


def chaining_self_attention(model):
    """A node that wraps whatever attn1 replace patch it finds at each 3-tuple key (maybe the pack's hook)."""
    from comfy.ldm.modules.attention import optimized_attention
    m = model.clone()
    for key in transformer_keys(m, False):
        previous = m.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {}).get(key)

        def damped(q, k, v, extra_options, previous=previous):
            out = previous(q, k, v, extra_options) if previous is not None else \
                optimized_attention(q, k, v, extra_options["n_heads"])
            return out * 0.9
        m.set_model_attn1_replace(damped, *key)
    return m


OTHERS = {
    "PerturbedAttentionGuidance": ("sd15", pag),
    "SelfAttentionGuidance": ("sd15", sag),
    "FreeU_V2": ("sd15", freeu),
    "IP-Adapter SD1.5 (block-level key)": ("sd15", lambda m: ip_adapter_style(m, True)),
    "IP-Adapter SDXL (3-tuple key, .add)": ("sdxl", lambda m: ip_adapter_style(m, False)),
    "Flux attention override": ("flux", attention_override),
    "U-Net attention override": ("sd15", attention_override),
    "Flux override chaining to the one it found": ("flux", chaining_override),
    "U-Net attn1 patch chaining to the one it found": ("sd15", chaining_self_attention),
}


def beside(co, fixtures, name, controller):
    """Samples of (the model alone, the other node alone, pack node then the other, the other then pack node)."""
    kind, other = OTHERS[name]
    model = fixtures.tiny_model(kind)
    pos, neg = conds(fixtures)
    x = latent(kind)

    def sample(m):
        return ksample(m, pos, neg, x, steps=3)
    return (sample(model), sample(other(model)), sample(other(co.hooks.with_controller(model, controller))),
            sample(co.hooks.with_controller(other(model), controller)))


@pytest.mark.parametrize("name", list(OTHERS))
def test_pass_through_pack_before_or_after_equals_the_other_node_alone(co, fixtures, name):
    plain, alone, pack_first, pack_last = beside(co, fixtures, name, co.controller.Controller())
    assert not torch.allclose(alone, plain, atol=1e-4)  # the other node has an effect
    torch.testing.assert_close(pack_first, alone, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pack_last, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(OTHERS))
def test_technique_and_the_other_node_both_act(co, fixtures, name):
    kind = OTHERS[name][0]
    _, alone, first, last = beside(co, fixtures, name, co.Tweak())
    pos, neg = conds(fixtures)
    technique = ksample(co.hooks.with_controller(fixtures.tiny_model(kind), co.Tweak()), pos, neg, latent(kind),
                        steps=3)
    for both in (first, last):
        assert not torch.allclose(both, alone, atol=1e-4) and not torch.allclose(both, technique, atol=1e-4)
    torch.testing.assert_close(first, last, rtol=1e-5, atol=1e-5)  # node order does not matter


def test_ip_adapter_add_on_the_pack_hook_stays_on_its_clone(co, fixtures):
    """On SDXL the IP-Adapter node calls `.add` on the pack's hook: the MODEL it got stays as it was."""
    model = fixtures.tiny_model("sdxl")
    pos, neg = conds(fixtures)
    x = latent("sdxl")
    patched = co.hooks.with_controller(model, co.controller.Controller())
    before = ksample(patched, pos, neg, x, steps=2)
    ip_adapter_style(patched, False)
    assert torch.equal(ksample(patched, pos, neg, x, steps=2), before)


def test_attention_patch_written_at_run_time_is_wrapped(co, fixtures):
    """A post-CFG function that patches the pack's own 3-tuple key at run time (as SAG-like nodes may) still runs
    under the pack's hook, and the pack's technique keeps acting."""
    import comfy.model_patcher
    import comfy.samplers
    model = fixtures.tiny_model("sd15")
    pos, neg = conds(fixtures)
    x = latent("sd15")
    seen = []

    def value_only(q, k, v, extra_options):
        seen.append(True)
        return v

    def post_cfg(args):
        options = comfy.model_patcher.set_model_options_patch_replace(args["model_options"].copy(), value_only,
                                                                      "attn1", "middle", 0, 0)
        (perturbed,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                      options)
        return args["denoised"] + (args["cond_denoised"] - perturbed)

    def with_post_cfg(m):
        m = m.clone()
        m.set_model_sampler_post_cfg_function(post_cfg)
        return m
    alone = ksample(with_post_cfg(model), pos, neg, x, steps=2)
    passed = ksample(with_post_cfg(co.hooks.with_controller(model, co.controller.Controller())), pos, neg, x, steps=2)
    torch.testing.assert_close(passed, alone, rtol=1e-6, atol=1e-6)
    assert seen
    tweaked = ksample(with_post_cfg(co.hooks.with_controller(model, co.Tweak())), pos, neg, x, steps=2)
    assert not torch.allclose(tweaked, alone, atol=1e-4)


# ----- cond and uncond in separate model calls -------------------------------------------------------------------

class SplitPasses:
    """CALC_COND_BATCH wrapper forcing one model call per pass, uncond first (the order of ComfyUI's own split
    when memory is short or the passes' ControlNets differ)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        out = [torch.zeros_like(x_in) for _ in conds]
        for i in reversed(range(len(conds))):
            if conds[i] is not None:
                self.calls += 1
                only = [c if j == i else None for j, c in enumerate(conds)]
                out[i] = executor(model, only, x_in, timestep, model_options)[i]
        return out

    def __deepcopy__(self, memo):
        return self


def half_mask(batch=1, size=16):
    m = torch.zeros(batch, size, size)
    m[:, :, : size // 2] = 1.0
    return m


def edit_run(co, fixtures, kind, controllers, split=None, batch=1, cfg=2.0, aux=False):
    model = fixtures.tiny_model(kind)
    pos, tgt, neg = (fixtures.tiny_conditioning(t) for t in ("a red cat", "a blue cat", ""))
    src = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    inv = co.inversion.invert(model, src, pos, steps=3)
    patched = model
    for controller in controllers if isinstance(controllers, tuple) else (controllers,):
        patched = co.hooks.with_controller(patched, controller)
    if split is not None:
        import comfy.patcher_extension
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test_split", split)
    branches = [co.edit.Branch("source", pos, 1.0), co.edit.Branch("target", tgt, cfg)]
    out, _ = co.edit.edit(patched, inv, branches + ([co.edit.Branch("aux", neg, 1.0)] if aux else []), negative=neg)
    return out["target"]


@pytest.mark.parametrize("kind,batch", [("sd15", 1), ("flux", 2)])
def test_kv_mix_acts_when_cond_and_uncond_run_separately(co, fixtures, kind, batch):
    mix = co.kv_mix.KVMix(half_mask(batch), 0.5, 2)
    joined = edit_run(co, fixtures, kind, mix, batch=batch)
    split = SplitPasses()
    separate = edit_run(co, fixtures, kind, mix, split, batch=batch)
    assert split.calls >= 6  # two calls per evaluation at least
    # same K/V up to batched-matmul rounding (without the re-run the uncond pass stays unmixed: differences ~5)
    torch.testing.assert_close(separate, joined, rtol=1e-5, atol=1e-4)
    unmixed = edit_run(co, fixtures, kind, co.controller.Controller(), batch=batch)
    assert not torch.allclose(separate, unmixed, atol=1e-4)


def test_source_injection_acts_when_cond_and_uncond_run_separately(co, fixtures):
    layers = co.hooks.self_attention_layers(fixtures.tiny_model("sd15"))
    inject = co.injection.SourceInjection("key+value", layers, 0, 2)
    joined = edit_run(co, fixtures, "sd15", inject)
    separate = edit_run(co, fixtures, "sd15", inject, SplitPasses())
    torch.testing.assert_close(separate, joined, rtol=1e-5, atol=1e-4)


def test_cpam_acts_when_cond_and_uncond_run_separately(co, fixtures):
    """CPAM preservation (source rows of each pass) and localized extraction (the aux branch's cond rows)."""
    source = torch.zeros(1, 16, 16)
    source[:, 4:12, 4:12] = 1.0
    target = co.cpam_masks.TargetMask("source", source)
    layers = co.hooks.self_attention_layers(fixtures.tiny_model("sd15"))
    chain = (co.cpam.SelfAttentionPreservation(source, target, layers, plain_fraction=0.0),
             co.cpam.LocalizedCrossAttention(target))
    joined = edit_run(co, fixtures, "sd15", chain, aux=True)
    separate = edit_run(co, fixtures, "sd15", chain, SplitPasses(), aux=True)
    torch.testing.assert_close(separate, joined, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(joined, edit_run(co, fixtures, "sd15", (), aux=True), atol=1e-4)


def test_split_outside_the_pack_warns_once_instead_of_failing(co, fixtures, caplog):
    """A node that splits the passes itself, outside the pack's wrapper: the uncond pass cannot read this
    evaluation's source K/V; the edit runs, and the log says so once."""
    import logging
    import comfy.patcher_extension
    model = fixtures.tiny_model("sd15")
    pos, tgt, neg = (fixtures.tiny_conditioning(t) for t in ("a red cat", "a blue cat", ""))
    inv = co.inversion.invert(model, torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), pos,
                              steps=3)
    outer = model.clone()
    outer.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test_split", SplitPasses())
    patched = co.hooks.with_controller(outer, co.kv_mix.KVMix(half_mask(), 0.5, 2))
    with caplog.at_level(logging.WARNING):
        out, _ = co.edit.edit(patched, inv, [co.edit.Branch("source", pos, 1.0), co.edit.Branch("target", tgt, 2.0)],
                              negative=neg)
    assert torch.isfinite(out["target"]).all()
    assert len([r for r in caplog.records if "partner rows" in r.getMessage()]) == 1
