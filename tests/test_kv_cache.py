"""The inversion's K/V cache: its size estimated exactly before it is built, the model's dtype by default, only
the steps and layers a KV-Mix in 'inversion cache' mode reads, refused when it cannot fit, staged on the model's
device per step (or whole) and freed after the edit; the INVERSION kept on ComfyUI's intermediate device."""
import pytest
import torch


@pytest.fixture(scope="module")
def kv(pack):
    class KV:
        store = pack("attention.kv_store")
        mix = pack("attention.kv_mix")
        shapes = pack("attention.layer_shapes")
        hooks = pack("attention.hooks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        invert = pack("nodes.invert")
    return KV


def latent(batch, h, w, channels=4):
    return {"samples": torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(0)) * 0.5}


def invert(kv, model, lat, pos, steps=3, **inputs):
    return kv.invert.Invert().run(model, lat, pos, steps, "simple", "auto", 1.0, exact_iterations=0, **inputs)[0]


@pytest.mark.parametrize("kind,hw,dtype,layers", [("sd15", (17, 13), "auto", ""), ("sdxl", (12, 10), "float16", ""),
                                                  ("flux", (17, 15), "bfloat16", "double.1, single.0"),
                                                  ("flux2", (9, 7), "auto", "single.1"),
                                                  ("flux_kontext", (17, 15), "auto", "double.0"),
                                                  ("chroma", (17, 15), "auto", "")])
def test_estimate_equals_the_built_cache(kv, fixtures, kind, hw, dtype, layers):
    model, pos = fixtures.tiny_model(kind), fixtures.tiny_conditioning("a red cat", kind)
    lat = latent(2, *hw)
    shapes = kv.shapes.self_attention_shapes(model, hw)
    assert tuple(shapes) == kv.hooks.self_attention_layers(model)
    inv = invert(kv, model, lat, pos, capture_steps="0, 2", cache_kv=True, cache_layers=layers, cache_dtype=dtype)
    cache = inv.store[kv.store.KV_KEY]
    chosen = {n.strip() for n in layers.split(",") if n.strip()} or set(shapes)
    assert set(cache) == {(s, n) for s in (0, 2) for n in chosen}
    want = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    assert all(k.dtype == want == v.dtype for k, v in cache.values())
    for (_, name), (k, _) in cache.items():
        assert k.shape[0] == 2 and k.shape[2] == shapes[name][0] and k.shape[1] * k.shape[3] == shapes[name][1]
    estimate = kv.store.estimate_bytes(shapes, {0, 2}, None if not layers else chosen, 2, want)
    assert estimate == kv.store.cache_bytes(cache) > 0


def test_auto_dtype_is_the_models_bf16(kv, fixtures):
    model = fixtures.tiny_model("flux", dtype=torch.bfloat16)
    assert kv.store.resolve_dtype(model, "auto") == torch.bfloat16
    inv = invert(kv, model, latent(1, 16, 16), fixtures.tiny_conditioning("a red cat"), steps=2, capture_steps="0",
                 cache_kv=True)
    k, v = inv.store[kv.store.KV_KEY][(0, "double.0")]
    assert k.dtype == v.dtype == torch.bfloat16 and torch.isfinite(k.float()).all()


def test_a_cache_larger_than_free_memory_is_refused_before_inverting(kv, fixtures):
    import comfy.model_management
    model = fixtures.tiny_model("flux")
    lat = latent(8, 512, 512)  # 65536 tokens x 64 channels x 4 layers x K,V x 8 images x 4 bytes = 1 GiB per step
    free = comfy.model_management.get_free_memory(torch.device("cpu"))
    steps = int(free // 2 ** 30) + 2
    with pytest.raises(ValueError, match=r"cache_kv: the K/V cache needs .* GiB, cpu memory has .* GiB free; cache "
                                         r"fewer steps \(capture_steps"):
        invert(kv, model, lat, fixtures.tiny_conditioning("a"), steps=steps, capture_steps=f"0-{steps - 1}",
               cache_kv=True, cache_dtype="float32")


def kv_mix_model(kv, fixtures, inject=2):
    model = fixtures.tiny_model("flux")
    return model, kv.hooks.with_controller(model, kv.mix.KVMix(torch.ones(1, 16, 16), 0.9, inject, "change", "cache"))


def test_cache_follows_the_kv_mix_and_names_the_input_that_misses_a_step(kv, fixtures):
    _, patched = kv_mix_model(kv, fixtures, inject=2)
    pos, lat = fixtures.tiny_conditioning("a red cat"), latent(1, 16, 16)
    every = set(kv.hooks.self_attention_layers(patched))
    for capture in ("", "0-3"):  # empty: exactly the inject steps; wider: narrowed to them
        inv = invert(kv, patched, lat, pos, steps=4, capture_steps=capture, cache_kv=True)
        assert set(inv.store[kv.store.KV_KEY]) == {(s, n) for s in (0, 1) for n in every}
    with pytest.raises(ValueError, match=r"capture_steps: the KV-Mix on this MODEL reads the K/V cache at steps 0-1 "
                                         r"\(its inject_steps\); '0' leaves out 1"):
        invert(kv, patched, lat, pos, steps=4, capture_steps="0", cache_kv=True)
    with pytest.raises(ValueError, match="cache_layers: the KV-Mix on this MODEL reads every layer"):
        invert(kv, patched, lat, pos, steps=4, cache_kv=True, cache_layers="double.0")
    with pytest.raises(ValueError, match=r"cache_layers: this MODEL has no attention layer \['double.9'\]"):
        invert(kv, patched, lat, pos, steps=4, cache_kv=True, cache_layers="double.9")
    with pytest.raises(ValueError, match="cache_kv: the MODEL carries a KV-Mix with kv_source 'inversion cache'"):
        invert(kv, patched, lat, pos, steps=4)


def test_edit_refuses_a_cache_that_misses_a_step_before_sampling(kv, fixtures):
    model, patched = kv_mix_model(kv, fixtures, inject=3)
    pos, tgt = fixtures.tiny_conditioning("a red cat"), fixtures.tiny_conditioning("a blue cat")
    inv = invert(kv, model, latent(1, 16, 16), pos, steps=4, capture_steps="0-1", cache_kv=True)
    branches = [kv.edit.Branch("source", pos, 1.0), kv.edit.Branch("target", tgt, 1.0)]
    with pytest.raises(ValueError, match="no cached K/V for step 2, layer double.0. Invert with this MODEL and "
                                         "cache_kv on with capture_steps '0-2'"):
        kv.edit.edit(patched, inv, branches)


def test_cache_is_staged_per_step_or_whole_and_freed_after_the_edit(kv, fixtures):
    import comfy.model_management
    _, patched = kv_mix_model(kv, fixtures, inject=2)
    pos, tgt = fixtures.tiny_conditioning("a red cat"), fixtures.tiny_conditioning("a blue cat")
    results = {}
    for device in ("cpu", "model"):
        inv = invert(kv, patched, latent(1, 16, 16), pos, steps=3, cache_kv=True, cache_device=device)
        keep = comfy.model_management.intermediate_device()
        assert all(t.device == keep for t in inv.trajectory)
        assert all(k.device == keep for k, _ in inv.store[kv.store.KV_KEY].values())
        assert set(inv.store) == {kv.store.KV_KEY}  # no per-run device caches (index tensors, token masks)
        cached = dict(inv.store[kv.store.KV_KEY])
        out, run = kv.edit.edit(patched, inv, [kv.edit.Branch("source", pos, 1.0), kv.edit.Branch("target", tgt, 2.0)],
                                negative=fixtures.tiny_conditioning(""))
        assert kv.store.KV_KEY not in run.store  # the edit's copy is freed
        assert inv.store[kv.store.KV_KEY] == cached  # the inversion keeps its own (re-runs of the edit reuse it)
        results[device] = out["target"]
    assert torch.equal(results["cpu"], results["model"])


def test_staged_copies_only_the_asked_step(kv):
    cache = {(s, n): (torch.full((1, 2, 3, 4), float(s)), torch.zeros(1, 2, 3, 4)) for s in (0, 1) for n in "ab"}
    one = kv.store.staged(cache, torch.device("cpu"), 1)
    assert set(one) == {(1, "a"), (1, "b")} and set(kv.store.staged(cache, "cpu")) == set(cache)
    assert kv.store.cache_bytes(cache) == 4 * 2 * 24 * 4
