"""ProEdit: KV-mix identities (delta 1 / empty mask / batch vs cache), Latents-Shift formula, edit masks from
attention (planted maps, tokenizer positions, nodes), a full graph, and clear errors."""
import pytest
import torch
from graphs import tiny_inputs
from probes import EditProbe


@pytest.fixture(scope="module")
def pe(pack):
    class PE:
        kv_mix = pack("attention.kv_mix")
        kv_store = pack("attention.kv_store")
        controller = pack("attention.controller")
        context = pack("attention.context")
        run_state = pack("attention.run_state")
        hooks = pack("attention.hooks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        shift = pack("latent_ops.latents_shift")
        masks = pack("latent_ops.masks")
        amask = pack("latent_ops.attention_mask")
        nodes = pack("nodes.proedit")
    return PE


def src_latent(batch=1, seed=0):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.5


def half_mask(batch=1, size=16):
    m = torch.zeros(batch, size, size)
    m[:, :, : size // 2] = 1.0
    return m


def setup(pe, fixtures, kind, batch=1, steps=2, cache_steps=None):
    model = fixtures.tiny_model(kind)
    pos, tgt, neg = (fixtures.tiny_conditioning(t, kind) for t in ("a red cat", "a blue cat", ""))
    inv_model = model
    if cache_steps is not None:
        inv_model = pe.hooks.with_controller(model, pe.kv_store.KVStore(cache_steps, dtype=torch.float32))
    inv = pe.inversion.invert(inv_model, src_latent(batch), pos, steps=steps, capture_steps=cache_steps or ())
    return model, inv, pos, tgt, neg


def edit_with(pe, model, inv, pos, tgt, neg, cfg=2.0, controller=None):
    if controller is not None:
        model = pe.hooks.with_controller(model, controller)
    out, _ = pe.edit.edit(model, inv, [pe.edit.Branch("source", pos, 1.0), pe.edit.Branch("target", tgt, cfg)],
                          negative=neg)
    return out["target"]


class FullInject:
    """Reference: target image K/V replaced by the source's cond-pass K/V (text K/V and Q untouched)."""
    kinds = ("self", "joint")

    def __init__(self, inject):
        self.inject = inject

    def wants(self, call):
        return call.kind in self.kinds and call.run is not None and call.run.phase == "edit" and call.step < self.inject

    def before(self, call):
        src = call.rows("source", True)
        k, v = call.k.clone(), call.v.clone()
        for cond in (True, False):
            for i, r in enumerate(call.rows("target", cond)):
                k[r, :, call.img] = call.k[src[i], :, call.img]
                v[r, :, call.img] = call.v[src[i], :, call.img]
        call.set_qkv(k=k, v=v)

    def after(self, call, out):
        return out

    def __deepcopy__(self, memo):
        return self


# ----- KV-mix ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_delta_one_with_full_mask_equals_plain_target_sampling(pe, fixtures, kind):
    model, inv, pos, tgt, neg = setup(pe, fixtures, kind)
    plain = edit_with(pe, model, inv, pos, tgt, neg)
    mixed = edit_with(pe, model, inv, pos, tgt, neg, controller=pe.kv_mix.KVMix(torch.ones(1, 128, 128), 1.0, 2))
    torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,batch", [("sd15", 1), ("flux", 2)])
def test_empty_mask_equals_full_source_kv_injection(pe, fixtures, kind, batch):
    model, inv, pos, tgt, neg = setup(pe, fixtures, kind, batch=batch)
    empty = edit_with(pe, model, inv, pos, tgt, neg, controller=pe.kv_mix.KVMix(torch.zeros(1, 16, 16), 0.9, 2))
    full = edit_with(pe, model, inv, pos, tgt, neg, controller=FullInject(2))
    assert torch.equal(empty, full)
    assert not torch.allclose(empty, edit_with(pe, model, inv, pos, tgt, neg), atol=1e-4)


@pytest.mark.parametrize("kind,cfg", [("sd15", 2.0), ("flux", 1.0), ("flux", 2.0)])
def test_batch_and_inversion_cache_sources_agree(pe, fixtures, kind, cfg):
    model, inv, pos, tgt, neg = setup(pe, fixtures, kind, batch=2, cache_steps=[0, 1])
    assert len(inv.store["kv_cache"]) > 0
    mask = half_mask(2)
    batch = edit_with(pe, model, inv, pos, tgt, neg, cfg, pe.kv_mix.KVMix(mask, 0.9, 2, "change", "batch"))
    cache = edit_with(pe, model, inv, pos, tgt, neg, cfg, pe.kv_mix.KVMix(mask, 0.9, 2, "change", "cache"))
    torch.testing.assert_close(cache, batch, rtol=1e-4, atol=1e-4)  # same K/V up to batched-matmul rounding
    assert not torch.allclose(batch, edit_with(pe, model, inv, pos, tgt, neg, cfg), atol=1e-4)


@pytest.mark.parametrize("kind,edit_type", [("sd15", "change"), ("flux", "change"), ("flux", "add"),
                                            ("flux", "style"), ("flux2", "change"), ("flux_kontext", "change"),
                                            ("chroma", "change")])
def test_only_masked_tokens_mix(pe, fixtures, kind, edit_type):
    model, inv, pos, tgt, neg = setup(pe, fixtures, kind)
    pre, post = [], []
    delta = 0.7
    patched = pe.hooks.with_controller(model, EditProbe(pre))
    patched = pe.hooks.with_controller(patched, pe.kv_mix.KVMix(half_mask(1, 128), delta, 1, edit_type))
    patched = pe.hooks.with_controller(patched, EditProbe(post))
    edit_with(pe, patched, inv, pos, tgt, neg)
    assert len(pre) == len(post) > 0
    checked = 0
    for a, b in zip(pre, post):
        kind_, layer, step, q0, k0, v0, roles, conds, img, txt, grid = a
        _, _, _, q1, k1, v1, *_ = b
        assert torch.equal(q0, q1)
        if kind_ == "cross" or step >= 1:
            assert torch.equal(k0, k1) and torch.equal(v0, v1)
            continue
        h, w = grid
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[:, : w // 2] = True
        inside = inside.flatten()
        src = [i for i, (r, c) in enumerate(zip(roles, conds)) if r == "source" and c][0]
        for row, role in enumerate(roles):
            if role != "target":
                assert torch.equal(k1[row], k0[row]) and torch.equal(v1[row], v0[row])
                continue
            if txt is not None and kind_ == "joint":
                assert torch.equal(k1[row, :, txt], k0[row, :, txt])
                # Kontext's reference tokens follow the image tokens: never mixed
                assert torch.equal(k1[row, :, img.stop:], k0[row, :, img.stop:])
                assert torch.equal(v1[row, :, img.stop:], v0[row, :, img.stop:])
            for new, old in ((k1, k0), (v1, v0)):
                n, t, s = new[row, :, img], old[row, :, img], old[src, :, img]
                mixed = torch.lerp(s, t, delta)
                keep_src = ~inside if edit_type == "change" else inside if edit_type == "add" else torch.zeros_like(inside)
                torch.testing.assert_close(n[:, keep_src], s[:, keep_src], rtol=0, atol=0)
                torch.testing.assert_close(n[:, ~keep_src], mixed[:, ~keep_src], rtol=1e-6, atol=1e-6)
            checked += 1
    assert checked > 0


def test_mask_is_resized_to_each_token_grid(pe):
    mask = torch.zeros(1, 128, 128)
    mask[:, :64, :] = 1.0
    for grid in ((16, 16), (8, 8), (4, 4)):
        m = pe.masks.to_tokens(mask, grid).view(grid)
        assert torch.equal(m[: grid[0] // 2], torch.ones(grid[0] // 2, grid[1]))
        assert torch.equal(m[grid[0] // 2:], torch.zeros(grid[0] // 2, grid[1]))


def test_kv_mix_bad_inputs_give_clear_errors(pe, fixtures):
    with pytest.raises(ValueError, match="mask: edit type 'change' needs an edit mask"):
        pe.kv_mix.KVMix(None, 0.9, 5, "change")
    with pytest.raises(ValueError, match="delta must lie in"):
        pe.kv_mix.KVMix(torch.ones(1, 8, 8), 1.5)
    with pytest.raises(ValueError, match="expected a MASK"):
        pe.kv_mix.KVMix(torch.ones(8), 0.9)
    model, inv, pos, tgt, neg = setup(pe, fixtures, "flux", steps=2)
    with pytest.raises(ValueError, match="cache_kv on with capture_steps '0-1'"):
        edit_with(pe, model, inv, pos, tgt, neg, 1.0, pe.kv_mix.KVMix(half_mask(), 0.9, 2, "change", "cache"))
    with pytest.raises(ValueError, match="mask: it has batch 3"):
        edit_with(pe, model, inv, pos, tgt, neg, 1.0, pe.kv_mix.KVMix(half_mask(3), 0.9, 2))


# ----- Latents-Shift --------------------------------------------------------------------------------------------

def test_latents_shift_identity_formula_and_locality(pe):
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.3 + 0.2
    mask = torch.zeros(2, 16, 16)
    mask[0, 2:9, 3:12] = 1.0
    mask[1, 8:, :] = 1.0
    assert torch.equal(pe.shift.latents_shift(z, mask, 0.0, 5), z)
    beta = 0.25
    out = pe.shift.latents_shift(z, mask, beta, 5)
    r = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    expected = z.clone()
    for b in range(2):
        sel = mask[b].bool()
        for c in range(4):
            zs, rs = z[b, c][sel], r[b, c][sel]
            std_z = (zs.var(unbiased=False) + 1e-5).sqrt()
            std_r = (rs.var(unbiased=False) + 1e-5).sqrt()
            tilde = std_r * (zs - zs.mean()) / std_z + rs.mean()
            expected[b, c][sel] = beta * tilde + (1 - beta) * zs
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    outside = ~mask.bool()[:, None].expand_as(z)
    assert torch.equal(out[outside], z[outside])
    assert not torch.allclose(out, z)
    # a pixel-size mask gives the same result as its latent-size version
    big = mask.repeat_interleave(8, -1).repeat_interleave(8, -2)
    assert torch.equal(pe.shift.latents_shift(z, big, beta, 5), out)


def test_latents_shift_node_sets_only_the_target_start(pe, fixtures):
    model, inv, pos, tgt, neg = setup(pe, fixtures, "flux", steps=2)
    (shifted,) = pe.nodes.LatentsShift().shift(inv, half_mask(1, 128), 0.25, 3)
    assert shifted.target_start is not None and inv.target_start is None
    assert shifted.trajectory is inv.trajectory
    out, _ = pe.edit.edit(model, shifted, [pe.edit.Branch("source", pos, 1.0), pe.edit.Branch("target", tgt, 1.0)])
    torch.testing.assert_close(out["source"], src_latent(), rtol=1e-5, atol=1e-5)  # replay untouched
    with pytest.raises(ValueError, match="mask: it has batch 2"):
        pe.nodes.LatentsShift().shift(inv, half_mask(2), 0.25, 0)


# ----- edit masks from attention --------------------------------------------------------------------------------

def planted(pe, h=8, w=8, heads=4, dim=16, txt=6, word=3):
    g = torch.Generator().manual_seed(0)
    region = torch.zeros(h, w, dtype=torch.bool)
    region[2:5, 3:7] = True
    k = torch.randn(1, heads, txt + h * w, dim, generator=g) * 0.3
    q = torch.randn(1, heads, h * w, dim, generator=g) * 0.3
    q[:, :, region.flatten()] += 3.0 * k[:, :, word][:, :, None] / k[:, :, word].norm(dim=-1)[..., None, None]
    return q, k, region


def test_word_attention_recovers_a_planted_region(pe):
    q, k, region = planted(pe)
    m = pe.amask.word_attention(q, k, [3], 16 ** -0.5).view(1, 8, 8)
    mask = pe.amask.mask_from_map(m, dilate=0)[0].bool()
    assert torch.equal(mask, region)
    dilated = pe.amask.mask_from_map(m, dilate=1)[0].bool()
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:6, 2:8] = True
    assert torch.equal(dilated, expected)


def test_word_attention_controller_on_a_joint_call(pe):
    """The capture controller on a planted MMDiT joint call: text first, the softmax over all keys."""
    q_img, k, region = planted(pe)
    txt = 6
    q = torch.cat([torch.randn(1, 4, txt, 16), q_img], 2)
    run = pe.run_state.RunState(branches=("source",), phase="capture", latent_hw=(16, 16))
    call = pe.context.AttnCall(q, k, k.clone(), "joint", "double.1", slice(txt, txt + 64), slice(0, txt), (8, 8),
                               (16, 16), 0, 0.0, ["source"], [True], run)
    ctl = pe.amask.WordAttention([3], layers={"double.1"})
    assert ctl.wants(call)
    ctl.after(call, None)
    m = run.store[pe.amask.MAPS_KEY][0]
    assert torch.equal(pe.amask.mask_from_map(m, 0)[0].bool(), region)
    probs = call.probs()[0, :, txt:, 3].mean(0).view(8, 8)  # full joint softmax, head-averaged
    torch.testing.assert_close(m[0], probs, rtol=1e-5, atol=1e-6)


def test_word_positions_with_the_real_clip_tokenizer(pe, comfy):
    import comfy.sd1_clip

    class Clip:
        tokenizer = comfy.sd1_clip.SD1Tokenizer()

        def tokenize(self, text, return_word_ids=False):
            return self.tokenizer.tokenize_with_weights(text, return_word_ids)
    clip = Clip()
    prompt = "a photo of a tabby cat, sitting on a skateboard"
    pos_cat = pe.amask.word_token_positions(clip, prompt, "cat")
    assert len(pos_cat) == 1 and pos_cat[0] > 0  # after the start token
    board = pe.amask.word_token_positions(clip, prompt, "Skateboard")
    n_board = len([t for t in clip.tokenize("skateboard", True)["l"][0] if t[2] != 0])
    assert len(board) == n_board and board == list(range(board[0], board[0] + n_board))
    both = pe.amask.word_token_positions(clip, prompt, "tabby cat")
    assert set(pos_cat) < set(both)
    with pytest.raises(ValueError, match=r"\['dog'\] not in the source prompt; its words are \['a', 'photo'"):
        pe.amask.word_token_positions(clip, prompt, "dog")


@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_mask_node_on_tiny_models(pe, fixtures, kind):
    model = fixtures.tiny_model(kind)
    prompt = "a red cat on grass"
    pos = fixtures.tiny_conditioning(prompt)
    latent = {"samples": src_latent(2)}
    image = torch.rand(2, 128, 128, 3)
    node = pe.nodes.EditMaskFromAttention()
    mask, over = node.extract(model, latent, pos, fixtures.WordClip(), prompt, "cat", 1, image)
    assert mask.shape == (2, 128, 128) and over.shape == (2, 128, 128, 3)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() < 1
    mask2, over2 = node.extract(model, latent, pos, fixtures.WordClip(), prompt, "cat", 0)
    assert mask2.shape == (2, 128, 128) and over2.shape == (2, 128, 128, 3)
    assert mask2.sum() <= mask.sum()
    with pytest.raises(ValueError, match=r"word: \['dog'\] not in the source prompt; its words are \['a', 'red'"):
        node.extract(model, latent, pos, fixtures.WordClip(), prompt, "dog", 1)


# ----- the whole chain as a ComfyUI graph -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_proedit_graph_runs(run, kind):
    prompt = {
        **tiny_inputs(kind),
        "6": {"class_type": "AttentionEditInvert", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "positive": ["2", 0], "steps": 3, "scheduler": "simple",
            "solver": "auto", "cfg": 1.0, "capture_steps": "0-1", "cache_kv": True, "cache_dtype": "float32"}},
        "7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "8": {"class_type": "AttentionEditKVMix", "inputs": {
            "model": ["1", 0], "delta": 0.9, "inject_steps": 2, "edit_type": "change", "kv_source": "inversion cache",
            "mask": ["7", 0]}},
        "9": {"class_type": "AttentionEditLatentsShift", "inputs": {
            "inversion": ["6", 0], "mask": ["7", 0], "beta": 0.25, "seed": 0}},
        "10": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["8", 0], "inversion": ["9", 0], "target_positive": ["3", 0], "target_cfg": 2.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "negative": ["4", 0]}},
    }
    out = run(prompt)
    edited = out["10"][0]["samples"]
    assert edited.shape == (1, 4, 16, 16) and torch.isfinite(edited).all()


@pytest.mark.parametrize("family", ["qwen_image", "z_image"])
def test_word_positions_through_llm_chat_templates(pack, family):
    """Qwen-Image's and Z-Image's real tokenizers (ComfyUI ships them) wrap the prompt in a chat template and give
    every token one word id: each occurrence of the word is found by difference, in the encoded prompt's positions
    (Qwen-Image's encoder drops the template's prefix: 5 tokens of template follow the prompt in both)."""
    import comfy.sd
    from comfy.text_encoders import qwen_image, z_image
    am = pack("latent_ops.attention_mask")
    tokenizer = {"qwen_image": qwen_image.QwenImageTokenizer, "z_image": z_image.ZImageTokenizer}[family]()
    clip = comfy.sd.CLIP(no_init=True)  # ComfyUI's CLIP with its real tokenizer; no text model is needed here
    clip.tokenizer, clip.tokenizer_options = tokenizer, {}
    hf = getattr(tokenizer, tokenizer.clip).tokenizer
    prompt = "a photo of a cat sitting on a cat tree"
    user = hf(prompt)["input_ids"]
    total = sum(len(chunk) for chunk in clip.tokenize(prompt)[tokenizer.clip])
    prefix = total - len(user) - 5
    kept = len(user) + 5 if family == "qwen_image" else total  # what the encoder hands the model
    first = prefix if family == "z_image" else 0
    expected = [first + i for i, t in enumerate(user) if hf.decode([t]).strip() == "cat"]
    assert len(expected) == 2
    assert am.word_token_positions(clip, prompt, "cat", "dit", cond_length=kept) == expected
    assert am.word_token_positions(clip, prompt, "photo", "dit", cond_length=kept) == [first + 1]
    with pytest.raises(ValueError, match="not in the source prompt"):
        am.word_token_positions(clip, prompt, "dog", "dit", cond_length=kept)
