"""No host <-> device synchronisation and no tensors made from Python data inside attention calls, for every
technique on the tiny U-Net and Flux models; the controllers' host-side MASKs are read only while the per-run
caches are cold (the first step). See host_traffic.py for what is counted."""
import pytest
import torch

from host_traffic import HostTraffic, host_tensors, instrument

KINDS = ["sd15", "flux"]
STEPS = 2


@pytest.fixture(scope="module")
def m(pack):
    class M:
        hooks = pack("attention.hooks")
        kv_mix = pack("attention.kv_mix")
        kv_store = pack("attention.kv_store")
        injection = pack("attention.source_injection")
        uniform = pack("attention.uniform")
        capture = pack("attention.capture")
        record = pack("attention.attention_record")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
        amask = pack("latent_ops.attention_mask")
        unifyedit = pack("latent_ops.unifyedit")
        latent_hooks = pack("latent_ops.latent_hooks")
        cpam = pack("nodes.cpam")
        region = pack("attention.region_prompt")
    return M


def half_mask(batch=1, size=128):
    mask = torch.zeros(batch, size, size)
    mask[:, :, : size // 2] = 1.0
    return mask


def source_latent(batch):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5


def edit_run(m, fixtures, kind, patch, batch=1, aux=False, cache=False, inference=False, target_length=8):
    """Inverts, patches the model with `patch(model)` and edits under the counter; returns the counted calls.
    target_length: the target prompt's token count (other than 8: the prompts are padded to one length)."""
    model = fixtures.tiny_model(kind)
    pos, empty = (fixtures.tiny_conditioning(t) for t in ("a red cat", ""))
    tgt = fixtures.tiny_conditioning("a blue cat", length=target_length)
    inv_model = m.hooks.with_controller(model, m.kv_store.KVStore(dtype=torch.float32)) if cache else model
    with torch.inference_mode(inference):
        inv = m.inversion.invert(inv_model, source_latent(batch), pos, steps=STEPS,
                                 capture_steps=range(STEPS) if cache else ())
    patched = patch(model)
    counter = HostTraffic(host_tensors(patched))
    branches = [m.edit.Branch("source", pos, 1.0), m.edit.Branch("target", tgt, 2.0)]
    if aux:
        branches.append(m.edit.Branch("aux", empty, 1.0))
    with torch.inference_mode(inference), counter:
        m.edit.edit(instrument(patched, counter), inv, branches, negative=empty)
    return counter.calls


def kv_mix(source):
    def case(m, fixtures, kind):
        mix = m.kv_mix.KVMix(half_mask(2), 0.9, STEPS, "change", source)
        return edit_run(m, fixtures, kind, lambda model: m.hooks.with_controller(model, mix), batch=2,
                        cache=source == "cache")
    return case


def injection(mode):
    def case(m, fixtures, kind):
        def patch(model):
            layers = m.hooks.self_attention_layers(model)
            return m.hooks.with_controller(model, m.injection.SourceInjection(mode, layers, 0, STEPS))
        return edit_run(m, fixtures, kind, patch, batch=2)
    return case


def cpam_self(mode):
    def case(m, fixtures, kind):
        def patch(model):
            return m.cpam.CPAMSelfAttentionPreservation().patch(model, half_mask(), mode, True, 0, 0, 0.2, 3,
                                                               "cross_attention", 1, 0.3, mask_tokens="1")[0]
        return edit_run(m, fixtures, kind, patch)
    return case


def cpam_cross(m, fixtures, kind):
    def patch(model):
        return m.cpam.CPAMLocalizedCrossAttention().patch(model, half_mask(), "given", 0, 0.3,
                                                          target_mask=half_mask(1, 64))[0]
    return edit_run(m, fixtures, kind, patch, aux=True)


def cpam_both(m, fixtures, kind):
    def patch(model):
        model = m.cpam.CPAMSelfAttentionPreservation().patch(model, half_mask(), "change", False, 0, 0, 0.0, 0,
                                                             "source", 0, 0.3)[0]
        return m.cpam.CPAMLocalizedCrossAttention().patch(model, half_mask(), "source", 0, 0.3)[0]
    return edit_run(m, fixtures, kind, patch, aux=True)


def uniform(m, fixtures, kind):
    return edit_run(m, fixtures, kind, lambda model: m.hooks.with_controller(model, m.uniform.UniformAttention("aux")),
                    aux=True)


def region_prompt(m, fixtures, kind):
    """Region Prompt's word and own-region biases (the target's words 'blue cat' at positions 1-2)."""
    ctl = m.region.RegionPrompt(half_mask(), [1, 2], strength=20.0, self_strength=8.0)
    return edit_run(m, fixtures, kind, lambda model: m.hooks.with_controller(model, ctl))


def padded_prompts(m, fixtures, kind):
    """Prompts of different lengths: the padded text keys masked in every call, techniques and maps included."""
    def patch(model):
        model = m.hooks.with_controller(model, m.uniform.UniformAttention("target", during_inversion=False))
        model = m.hooks.with_controller(model, m.kv_mix.KVMix(half_mask(), 0.9, STEPS, "change", "batch"))
        return m.hooks.with_controller(model, m.capture.AttentionCapture("maps", phases=("edit",)))
    return edit_run(m, fixtures, kind, patch, aux=True, target_length=40)


def unifyedit_record(m, fixtures, kind):
    def patch(model):
        record = m.record.AttentionRecord((1,), sa_scales=None, ca_scales=None)
        hook = m.unifyedit.UnifyEditHook(m.unifyedit.UnifyEditConfig(active_steps=STEPS, iterations=1))
        return m.latent_hooks.with_latent_hook(m.hooks.with_controller(m.unifyedit.grad_ready(model), record), hook)
    return edit_run(m, fixtures, kind, patch, inference=True)


def word_mask(m, fixtures, kind):
    model = fixtures.tiny_model(kind)
    counter = HostTraffic()
    # word_attention_map patches the model itself; instrument the patched clone it makes through with_controller
    patched = m.hooks.with_controller(model, m.amask.WordAttention([1], None if kind == "sd15" else
                                                                   [m.amask.last_double_block(model)]))
    run = m.amask.RunState(branches=("source",), per_branch=1, phase="capture", total_steps=1, latent_hw=(16, 16))
    run.step = 0
    patched.model_options["transformer_options"][m.amask.RUN_KEY] = run
    latent = source_latent(1)

    def loop(model_fn, x, sig):
        model_fn(x, float(sig[0]))
        return x
    with counter:
        m.amask.run_guided(instrument(patched, counter), fixtures.tiny_conditioning("a red cat"), None, 1.0, latent,
                           torch.zeros(1), loop, 0)
    assert run.store.get(m.amask.MAPS_KEY) is not None
    return counter.calls


CASES = {"kv_mix_batch": kv_mix("batch"), "kv_mix_cache": kv_mix("cache"), "injection_kv": injection("key+value"),
         "injection_v": injection("value"), "injection_qk": injection("query+key"),
         "cpam_self_change": cpam_self("change"), "cpam_self_remove": cpam_self("remove"), "cpam_cross": cpam_cross,
         "cpam_both": cpam_both, "uniform": uniform, "region_prompt": region_prompt, "padded_prompts": padded_prompts,
         "unifyedit_record": unifyedit_record, "word_mask": word_mask}


def summary(calls):
    totals = {k: sum(c.counts[k] for c in calls) for k in ("sync", "python", "host")}
    ops = sorted({op for c in calls for op in c.ops})
    return totals, ops


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_attention_calls_never_sync_nor_copy_from_the_host(m, fixtures, case, kind):
    if case == "unifyedit_record" and kind == "flux":
        pytest.skip("UnifyEdit refuses Flux models (U-Net self-attention maps only)")
    calls = CASES[case](m, fixtures, kind)
    assert calls, "no attention call was seen"
    bad = [c for c in calls if c.counts["sync"] or c.counts["python"]]
    assert not bad, (f"{len(bad)} of {len(calls)} attention calls sync or copy from the host: {summary(bad)}")
    steps = sorted({c.step for c in calls if c.step is not None})
    warm = [c for c in calls if c.counts["host"] and c.step is not None and c.step > steps[0]]
    assert not warm, f"{len(warm)} calls after the first step read the host MASKs again: {summary(warm)}"
