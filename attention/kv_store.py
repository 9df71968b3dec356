"""K/V cache controller: keeps the source branch's image-token keys and values for chosen steps and layers;
its size estimated before it is built, its dtype, and its entries staged on the model's device when read."""
import torch

from .controller import Controller

KV_KEY = "kv_cache"


class KVStore(Controller):
    """Stores (K, V) of the image tokens of the source rows' conditional pass, [B, heads, n_img, dim], in
    run.store[KV_KEY][(step, layer)], on `device` in `dtype` (None: the dtype attention computes in). Only what an
    edit will use: image tokens (text K/V of the target pass are kept by KV-mix), chosen steps and layers, one copy
    per source image.
    """
    kinds = ("self", "joint")

    def __init__(self, steps=None, layers=None, dtype=None, device="cpu", phases=("capture",)):
        """device: a torch device (or name) to keep the cache on, or "model" for the attention call's device."""
        self.steps = None if steps is None else frozenset(steps)
        self.layers = None if layers is None else frozenset(layers)
        self.dtype, self.device, self.phases = dtype, device, tuple(phases)

    def wants(self, call):
        return (call.kind in self.kinds and call.run is not None and call.run.phase in self.phases
                and (self.steps is None or call.step in self.steps)
                and (self.layers is None or call.layer in self.layers))

    def after(self, call, out):
        rows = call.index(call.rows("source", True) or call.rows(None, True))
        device = call.k.device if self.device == "model" else self.device
        dtype = self.dtype or call.k.dtype
        k = call.k[rows][:, :, call.img].to(device=device, dtype=dtype)
        v = call.v[rows][:, :, call.img].to(device=device, dtype=dtype)
        call.run.store.setdefault(KV_KEY, {})[(call.step, call.layer)] = (k, v)
        return out


def cache_bytes(cache):
    """Bytes the cache's tensors hold."""
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache.values())


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(model, choice):
    """The cache dtype for a choice of "auto" (the dtype the model computes attention in: its manual-cast dtype,
    else its weight dtype; float16 would overflow bf16 activations above 65504) or a name in DTYPES."""
    if choice != "auto":
        return DTYPES[choice]
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


def estimate_bytes(shapes, steps, layers, batch, dtype):
    """Bytes of a cache of `steps` x `layers` (None: every layer in shapes) x (K, V) x batch x tokens x channels;
    shapes from attention.layer_shapes.self_attention_shapes."""
    size = torch.empty((), dtype=dtype).element_size()
    per_step = sum(t * c for name, (t, c) in shapes.items() if layers is None or name in layers)
    return len(steps) * 2 * batch * per_step * size


def staged(cache, device, step=None):
    """The cache's entries (only those of `step` unless None) copied to `device`: a new dict, the cache untouched."""
    return {key: (k.to(device), v.to(device)) for key, (k, v) in cache.items() if step is None or key[0] == step}
