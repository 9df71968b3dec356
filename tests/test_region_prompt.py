"""Region Prompt: the bias formula on one attention call, its schedule and pass-through, and the node in real graphs
(Edit Sampler and FlowEdit on the embedded U-Net and Flux) with its errors."""
import pytest
import torch

GRID, N, TXT = (4, 4), 16, 6


@pytest.fixture(scope="module")
def rp(pack):
    class Modules:
        context = pack("attention.context")
        run_state = pack("attention.run_state")
        controller = pack("attention.controller")
        region = pack("attention.region_prompt")
    return Modules


def make_call(rp, kind, step=2, phase="edit", roles=("source", "target"), conds=(True, True), ref=0):
    g = torch.Generator().manual_seed(3)
    b = len(roles)
    n_q = N + (TXT + ref if kind == "joint" else 0)
    n_keys = {"self": N, "cross": TXT, "joint": TXT + N + ref}[kind]
    q, k, v = (torch.randn(b, 2, n, 8, generator=g) for n in (n_q, n_keys, n_keys))
    img = slice(TXT, TXT + N) if kind == "joint" else slice(0, N)
    txt = slice(0, TXT) if kind != "self" else None
    run = rp.run_state.RunState(branches=tuple(dict.fromkeys(roles)), phase=phase, total_steps=10)
    return rp.context.AttnCall(q, k, v, kind, "l0", img, txt, GRID, (8, 8), step, 1.0, list(roles), list(conds), run)


def quadrant_mask():
    mask = torch.zeros(1, 8, 8)
    mask[:, :4, :4] = 1  # the top-left 2x2 tokens of the 4x4 grid
    return mask


def run_chain(rp, controller, call):
    return rp.controller.run_chain((controller,), call, lambda c: c.attend())


def expected_rows(call, row, bias):
    logits = (call.q[row, :, call.img] @ call.k[row].transpose(-1, -2)) * call.scale + bias
    return logits.softmax(-1) @ call.v[row]


@pytest.mark.parametrize("kind", ["cross", "joint"])
def test_bias_on_the_words_and_the_own_region(rp, kind):
    """Step 2 of 10 with end_percent 0.5: weight 1 - 2/5 = 0.6. Inside the mask the words' logits gain
    0.6 * strength, outside they lose it; (joint) image keys of the query's own region gain 0.6 * self_strength.
    The source row and the text queries stay plain; the bias joins the call's (one attention, any kernel)."""
    call = make_call(rp, kind)
    plain = call.attend()
    ctl = rp.region.RegionPrompt(quadrant_mask(), [2, 3], strength=3.0, self_strength=2.0, end_percent=0.5)
    out = run_chain(rp, ctl, call)
    m = torch.zeros(GRID)
    m[:2, :2] = 1
    m = m.flatten()
    bias = torch.zeros(N, call.k.shape[2])
    bias[:, [2, 3]] = 0.6 * 3.0 * (2 * m - 1)[:, None]
    if kind == "joint":
        same = m[:, None] * m[None, :] + (1 - m)[:, None] * (1 - m)[None, :]
        bias[:, TXT:TXT + N] += 0.6 * 2.0 * same
    torch.testing.assert_close(out[1, :, call.img], expected_rows(call, 1, bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], plain[0], atol=1e-6, rtol=1e-6)
    if kind == "joint":
        torch.testing.assert_close(out[1, :, :TXT], plain[1, :, :TXT], atol=1e-6, rtol=1e-6)
    assert call.extra_bias is not None and not call.plain
    # inside the mask the words get more attention than plain, outside less
    probs = lambda b: ((call.q[1, :, call.img] @ call.k[1].transpose(-1, -2)) * call.scale + b).softmax(-1)
    gain = (probs(bias)[..., [2, 3]].sum(-1) - probs(0)[..., [2, 3]].sum(-1)).mean(0)
    assert (gain[m > 0] > 0).all() and (gain[m == 0] < 0).all()


def test_self_attention_and_reference_keys(rp):
    """U-Net self-attention gets the own-region bias alone; joint reference tokens after the image get none."""
    call = make_call(rp, "self")
    ctl = rp.region.RegionPrompt(quadrant_mask(), [1], strength=3.0, self_strength=1.5, end_percent=1.0)
    out = run_chain(rp, ctl, call)
    m = torch.zeros(GRID)
    m[:2, :2] = 1
    m = m.flatten()
    same = m[:, None] * m[None, :] + (1 - m)[:, None] * (1 - m)[None, :]
    torch.testing.assert_close(out[1], expected_rows(call, 1, 0.8 * 1.5 * same), atol=1e-5, rtol=1e-5)
    ref = make_call(rp, "joint", ref=4)
    bias = ctl.bias(ref)
    n = TXT + N + 4
    assert bias.shape == (2, 1, n, n) and not bias[1, 0, TXT:TXT + N].eq(0).all()
    assert bias[..., TXT + N:].eq(0).all() and bias[0].eq(0).all()  # no reference key, no source row


def test_schedule_and_pass_through(rp):
    """No bias at or after end_percent of the steps, outside the pack's edit phase, on unconditional rows, or
    with both strengths 0; a prompt without words is refused."""
    mask = quadrant_mask()
    ctl = rp.region.RegionPrompt(mask, [2], strength=3.0, self_strength=1.0, end_percent=0.5)
    for call in (make_call(rp, "cross", step=5), make_call(rp, "cross", phase="sample"),
                 make_call(rp, "cross", conds=(False, False))):
        assert not ctl.wants(call)
        assert torch.equal(run_chain(rp, ctl, call), call.attend())
    off = rp.region.RegionPrompt(mask, [2], strength=0.0, self_strength=0.0)
    assert not any(off.wants(make_call(rp, kind)) for kind in ("self", "cross"))
    assert ctl.wants(make_call(rp, "cross", step=4)) and ctl.weight(make_call(rp, "cross", step=0)) == 1.0
    with pytest.raises(ValueError, match="words"):
        rp.region.RegionPrompt(mask, [])
    with pytest.raises(ValueError, match="the mask is 8x4 but the latent is 8x8"):
        run_chain(rp, rp.region.RegionPrompt(torch.ones(1, 8, 4), [2]), make_call(rp, "cross"))


def region_graph(denoiser, sampler, strength, words="blue circle", prompt="a blue circle on a black background"):
    """Embedded model, a 64 px source, Region Prompt (mask: the top-left quadrant), then Invert + Edit Sampler or
    FlowEdit with its MODEL and CONDITIONING; node "9" is the edited latent."""
    graph = {
        "1": {"class_type": "LoadEmbeddedEditModel", "inputs": {"denoiser": denoiser}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square on a black background",
                                                         "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "6": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "7": {"class_type": "MaskComposite", "inputs": {"destination": ["5", 0], "source": ["6", 0], "x": 0, "y": 0,
                                                        "operation": "add"}},
        "8": {"class_type": "AttentionEditRegionPrompt", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "mask": ["7", 0], "prompt": prompt, "words": words,
            "strength": strength, "self_strength": strength / 2, "end_percent": 0.8}},
    }
    if sampler == "edit":
        graph["10"] = {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["8", 0], "latent": ["4", 0], "positive": ["2", 0], "steps": 4, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0}}
        graph["9"] = {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["8", 0], "inversion": ["10", 0], "target_positive": ["8", 1], "target_cfg": 3.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["3", 0]}}
    else:
        graph["9"] = {"class_type": "AttentionEditFlowEdit", "inputs": {
            "model": ["8", 0], "latent": ["4", 0], "source_positive": ["2", 0], "target_positive": ["8", 1],
            "steps": 4, "scheduler": "simple", "n_max": 3, "n_min": 0, "n_avg": 1, "source_cfg": 1.0,
            "target_cfg": 3.0, "seed": 0, "negative": ["3", 0]}}
    return graph


@pytest.mark.parametrize("denoiser", ["unet", "flux"])
@pytest.mark.parametrize("sampler", ["edit", "flowedit"])
def test_region_prompt_node_in_a_graph(run, denoiser, sampler):
    """Strength 0 is the prompt alone (its CONDITIONING is CLIPTextEncode's); a strength changes the edit."""
    plain = run(region_graph(denoiser, sampler, 0.0))["9"][0]["samples"]
    same = region_graph(denoiser, sampler, 0.0)
    same["11"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue circle on a black background",
                                                             "clip": ["1", 1]}}
    same["9"]["inputs"]["target_positive"] = ["11", 0]
    torch.testing.assert_close(run(same)["9"][0]["samples"], plain, atol=0, rtol=0)
    biased = run(region_graph(denoiser, sampler, 8.0))["9"][0]["samples"]
    assert (biased - plain).abs().mean() > 1e-3


@pytest.mark.parametrize("words,prompt,match", [
    ("dog", "a blue circle on a black background", r"words: \['dog'\] not in the prompt"),
    ("", "a blue circle on a black background", "words: empty"),
    ("blue", "  ", "prompt: empty"),
])
def test_region_prompt_node_errors(run, words, prompt, match):
    with pytest.raises(Exception, match=match):
        run(region_graph("unet", "edit", 4.0, words=words, prompt=prompt))


def region_edit(pack, fixtures, kind, patch_other, region=True, target_length=8):
    """Invert + Edit Sampler on a tiny model with another node's patch (patch_other) and, if region, Region Prompt
    on the target's words 'blue cat' (positions 1-2) over the left half; target_length other than the source's 8
    tokens pads the prompts to one length."""
    from test_preservation import source_latent
    inversion, edit, hooks = pack("latent_ops.inversion"), pack("latent_ops.edit"), pack("attention.hooks")
    model = fixtures.tiny_model(kind)
    pos, empty = (fixtures.tiny_conditioning(t) for t in ("a red cat", ""))
    tgt = fixtures.tiny_conditioning("a blue cat", length=target_length)
    inv = inversion.invert(model, source_latent(21), pos, steps=3)
    mask = torch.zeros(1, 128, 128)
    mask[..., :64] = 1
    if region:
        model = hooks.with_controller(model, pack("attention.region_prompt").RegionPrompt(mask, [1, 2]))
    model = patch_other(model)
    out, _ = edit.edit(model, inv, [edit.Branch("source", pos, 1.0), edit.Branch("target", tgt, 2.0)],
                       negative=empty)
    return out["target"]


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_region_prompt_bias_reaches_another_nodes_kernel(pack, fixtures, kind):
    """An attention override (as sage-attention nodes set) computes the biased calls, with the bias as its mask."""
    masks = []

    def override(func, *args, **kwargs):
        masks.append(kwargs.get("mask") is not None)
        return func(*args, **kwargs)

    def with_override(model):
        model = model.clone()
        model.model_options["transformer_options"]["optimized_attention_override"] = override
        return model
    biased = region_edit(pack, fixtures, kind, with_override)
    assert any(masks)
    masks.clear()
    plain = region_edit(pack, fixtures, kind, with_override, region=False)
    assert (biased - plain).abs().mean() > 1e-4


def test_region_prompt_warns_where_another_patch_takes_no_mask(pack, fixtures, caplog):
    """IP-Adapter-style attn2 replace patches take no mask: the log says Region Prompt cannot act there, and (a
    separate warning) that padded prompt keys reach them unmasked."""
    from test_coexistence import ip_adapter_style
    with caplog.at_level("WARNING"):
        region_edit(pack, fixtures, "sd15", lambda m: ip_adapter_style(m, True))
    assert "without the bias of Region Prompt" in caplog.text
    assert "pad the shorter prompts" not in caplog.text  # prompts of one length: nothing padded
    caplog.clear()
    with caplog.at_level("WARNING"):
        region_edit(pack, fixtures, "sd15", lambda m: ip_adapter_style(m, True), region=False, target_length=12)
    assert "pad the shorter prompts" in caplog.text and "Region Prompt" not in caplog.text


def test_region_prompt_beside_cpam_says_where_it_cannot_act(rp, pack, caplog):
    """CPAM recomputes the target's attention over its own key regions: Region Prompt's bias cannot join there,
    and the log says so once."""
    cpam = pack("attention.cpam")
    call = make_call(rp, "joint", roles=("source", "target", "aux"), conds=(True, True, True))
    target = type("Given", (), {"pixels": lambda self, c: quadrant_mask(), "controllers": lambda self: ()})()
    chain = (rp.region.RegionPrompt(quadrant_mask(), [2, 3]), cpam.LocalizedCrossAttention(target))
    again = make_call(rp, "joint", roles=("source", "target", "aux"), conds=(True, True, True))
    again.run = call.run  # a second call of the same run
    with caplog.at_level("WARNING"):
        for c in (call, again):
            rp.controller.run_chain(chain, c, lambda c: c.attend())
    assert caplog.text.count("CPAM on l0 computes attention without the bias of Region Prompt") == 1
