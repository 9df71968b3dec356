"""K/V cache controller: keeps the source branch's image-token keys and values for chosen steps and layers."""
import torch

from .controller import Controller

KV_KEY = "kv_cache"


class KVStore(Controller):
    """Stores (K, V) of the image tokens of the source rows' conditional pass, [B, heads, n_img, dim], in
    run.store[KV_KEY][(step, layer)], on `device` in `dtype`. Only what an edit will use: image tokens
    (text K/V of the target pass are kept by KV-mix), chosen steps and layers, one copy per source image.
    """
    kinds = ("self", "joint")

    def __init__(self, steps=None, layers=None, dtype=torch.float16, device="cpu", phases=("capture",)):
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
        k = call.k[rows][:, :, call.img].to(device=device, dtype=self.dtype)
        v = call.v[rows][:, :, call.img].to(device=device, dtype=self.dtype)
        call.run.store.setdefault(KV_KEY, {})[(call.step, call.layer)] = (k, v)
        return out


def cache_bytes(cache):
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache.values())
