"""Masked attention: the pack's one kernel path equals a float64 reference with an explicit full [B, H, Lq, Lk] bias,
never builds a tensor of that size, and CPAM's masked calls give the reference whichever attention backend ComfyUI
selected (chosen through the public transformer_options["optimized_attention_override"])."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

B, H, LQ, LK, D = 2, 3, 40, 37, 8
BACKENDS = ["pytorch", "split", "sub_quad", "basic"]


@pytest.fixture(scope="module")
def ma(pack):
    class MA:
        hooks = pack("attention.hooks")
        cpam = pack("attention.cpam")
        masks = pack("latent_ops.cpam_masks")
        tokens = pack("latent_ops.masks")
        inversion = pack("latent_ops.inversion")
        edit = pack("latent_ops.edit")
    return MA


def reference(q, k, v, full_bias):
    """float64 softmax(q k^T / sqrt(d) + bias) v with the bias given at full size [B, H, Lq, Lk]."""
    q, k, v = q.double(), k.double(), v.double()
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + full_bias.double()
    return logits.softmax(-1) @ v


class Sizes(TorchDispatchMode):
    """Largest tensor (elements) any op reads or writes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = list(args) + list((kwargs or {}).values()) + list(out if isinstance(out, (tuple, list)) else [out])
        for t in flat:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, LQ, D, generator=g), torch.randn(B, H, LK, D, generator=g),
            torch.randn(B, H, LK, D, generator=g))


@pytest.mark.parametrize("shape", [(1, 1, 1, LK), (B, 1, 1, LK), (1, 1, LQ, LK), (B, 1, LQ, LK), (B, 1, LQ, 1)])
def test_broadcast_bias_equals_the_full_bias_reference_without_materialising_it(pack, shape):
    masked = pack("attention.masked")
    q, k, v = qkv()
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(shape, generator=g)
    bias = bias.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))
    bias[..., 0] = 0.0  # every query keeps a key
    sizes = Sizes()
    with sizes:
        out = masked.masked_attention(q, k, v, bias)
    assert sizes.largest < B * H * LQ * LK
    torch.testing.assert_close(out.double(), reference(q, k, v, bias.expand(B, H, LQ, LK).clone()), rtol=1e-5,
                               atol=1e-5)


def test_comfy_masks_and_key_sets_become_broadcast_biases(pack):
    masked = pack("attention.masked")
    q, k, v = qkv(2)
    keep = torch.rand(B, LK, generator=torch.Generator().manual_seed(3)) < 0.5
    keep[1] = False  # an empty key set means every key
    bias = masked.keep_bias(masked.keep_any(keep), q.dtype)
    assert bias.shape == (B, 1, 1, LK)
    full = torch.zeros(B, H, LQ, LK, dtype=torch.float64)
    full[0] = full[0].masked_fill(~keep[0], float("-inf"))
    torch.testing.assert_close(masked.masked_attention(q, k, v, bias).double(), reference(q, k, v, full),
                               rtol=1e-5, atol=1e-5)
    comfy_bool = torch.rand(LQ, LK, generator=torch.Generator().manual_seed(4)) < 0.7  # True = attend
    comfy_bool[:, 0] = True
    as_bias = masked.as_bias(comfy_bool, q.dtype)
    assert as_bias.shape == (1, 1, LQ, LK)
    full = torch.zeros(B, H, LQ, LK, dtype=torch.float64).masked_fill(~comfy_bool, float("-inf"))
    torch.testing.assert_close(masked.masked_attention(q, k, v, as_bias).double(), reference(q, k, v, full),
                               rtol=1e-5, atol=1e-5)
    assert masked.as_bias(torch.zeros(B, LQ, LK), q.dtype).shape == (B, 1, LQ, LK)


SDPA = "_scaled_dot_product_"


class SdpaMasks(TorchDispatchMode):
    """Shapes of the masks (with q, k shapes) given to PyTorch's attention kernels."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if SDPA in name:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 and torch.is_tensor(args[3]) else None)
            if mask is not None:
                self.seen.append((tuple(mask.shape), tuple(args[0].shape), tuple(args[1].shape)))
        return func(*args, **kwargs)


class Select:
    """optimized_attention_override that runs one of ComfyUI's attention backends (counts its calls)."""

    def __init__(self, name):
        import comfy.ldm.modules.attention as attention
        self.fn = attention.attention_basic if name == "basic" else attention.get_attention_function(name)
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self


class Record:
    """Last in the chain: keeps every edit call's inputs and final output."""
    kinds = ("self", "cross", "joint")

    def __init__(self):
        self.seen = []

    def wants(self, call):
        return call.run is not None and call.run.phase == "edit"

    def before(self, call):
        pass

    def after(self, call, out):
        self.seen.append((call.kind, call.q.clone(), call.k.clone(), call.v.clone(), out.clone(), list(call.roles),
                          list(call.conds), call.img, call.txt, call.grid))
        return out

    def __deepcopy__(self, memo):
        return self


def half_mask(size=128):
    m = torch.zeros(1, size, size)
    m[:, :, : size // 2] = 1.0
    return m


def row(roles, conds, role, cond):
    return [i for i, (r, c) in enumerate(zip(roles, conds)) if r == role and c == cond][0]


def cpam_reference(ma, seen):
    """(pack output, float64 reference) of the target rows' image queries for one call: preservation in 'remove'
    mode (source background keys only) and localized extraction (inside M_t the own text, outside the aux text),
    both as one explicit full bias over the concatenated key sets."""
    kind, q, k, v, out, roles, conds, img, txt, grid = seen
    obj = ma.tokens.to_tokens(half_mask(), grid)[0] >= 0.5  # M_s = M_t, binary on every grid
    n = obj.shape[0]
    pairs = []
    for r, (role, cond) in enumerate(zip(roles, conds)):
        if role != "target" or (kind == "cross" and not cond):
            continue
        s, a = row(roles, conds, "source", cond), row(roles, conds, "aux", True)
        parts, blocked = [], []
        if kind in ("cross", "joint"):
            parts += [(k[r, :, txt], v[r, :, txt]), (k[a, :, txt], v[a, :, txt])]
            own = obj if cond else torch.ones(n, dtype=torch.bool)
            t = txt.stop - txt.start
            blocked += [(~own)[:, None].expand(n, t), own[:, None].expand(n, t)]
        if kind in ("self", "joint"):
            parts.append((k[s, :, img], v[s, :, img]))
            blocked.append(obj[None].expand(n, n))
        keys, values = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        full = torch.zeros(1, q.shape[1], n, keys.shape[1], dtype=torch.float64)
        full = full.masked_fill(torch.cat(blocked, 1), float("-inf"))
        want = reference(q[r:r + 1, :, img], keys[None], values[None], full)
        pairs.append((out[r:r + 1, :, img], want))
    return pairs


@pytest.mark.parametrize("kind", ["sd15", "flux"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cpam_masked_calls_match_the_reference_under_every_backend(ma, fixtures, kind, backend):
    model = fixtures.tiny_model(kind).clone()
    select = Select(backend)
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = select
    pos, tgt, empty = (fixtures.tiny_conditioning(t) for t in ("a red cat", "a blue cat", ""))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    inv = ma.inversion.invert(model, x, empty, steps=2)
    target = ma.masks.TargetMask("source", half_mask())
    record = Record()
    patched = ma.hooks.with_controller(model, ma.cpam.SelfAttentionPreservation(
        half_mask(), target, ma.hooks.self_attention_layers(model), mode="remove", plain_fraction=0.0))
    patched = ma.hooks.with_controller(patched, ma.cpam.LocalizedCrossAttention(target))
    patched = ma.hooks.with_controller(patched, record)
    select.calls = 0
    sdpa = SdpaMasks()
    with sdpa:
        ma.edit.edit(patched, inv, [ma.edit.Branch("source", pos, 1.0), ma.edit.Branch("target", tgt, 2.0),
                                    ma.edit.Branch("aux", empty, 1.0)], negative=empty)
    assert select.calls > 0, "the selected backend never ran"
    assert sdpa.seen, "no masked call reached the masked kernel"
    for mask, q, k in sdpa.seen:  # broadcast over heads (and over keys' queries where it can), never expanded
        assert mask[1] == 1 and len(mask) == 4, f"mask {mask} for q {q}, k {k}: heads dimension materialised"
    checked = 0
    for seen in record.seen:
        for got, want in cpam_reference(ma, seen):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked >= len(record.seen)
