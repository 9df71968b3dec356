"""Counts, per attention call, the host work that would stall or feed a GPU, on a CPU-only machine.

A TorchDispatchMode sees every aten op of a run; ops count only while an attention call of the pack is in progress
(a flag set by the entry wrappers that `instrument` installs through ComfyUI's public patch points: the U-Net
attn1/attn2 replace patches and Flux's optimized_attention_override). Three kinds are counted:
  sync:   ops that make the host wait for the device: _local_scalar_dense (`.item()`, `bool()`, `float()`),
          nonzero / masked_select, and indexing with a boolean mask (its size is only known on the device);
  python: tensors made from Python data (torch.tensor, indexing with a list, which copy host -> device on a GPU)
          and copies between devices;
  host:   ops reading a tensor a controller holds (the user's MASKs, which live in host memory on a GPU machine).
"""
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.item}
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
PYTHON = {aten.lift_fresh, aten.lift_fresh_copy}
COPIES = {aten._to_copy, aten.copy_}


def _tensors(values):
    for x in values:
        if torch.is_tensor(x):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from _tensors(x)


def _storage(t):
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


@dataclass
class Call:
    label: str
    phase: str
    step: object
    counts: dict = field(default_factory=lambda: {"sync": 0, "python": 0, "host": 0})
    ops: list = field(default_factory=list)


class HostTraffic(TorchDispatchMode):
    """Enter around a whole run; `calls` lists one Call per attention call with its counts and counted ops."""

    def __init__(self, host_tensors=()):
        super().__init__()
        self.host = {p for p in (_storage(t) for t in host_tensors) if p}
        self.calls, self.current = [], None

    def _kind(self, func, args, kwargs):
        packet = func.overloadpacket
        if packet in SYNC:
            return "sync"
        if packet in INDEXING and len(args) > 1 and any(t.dtype == torch.bool for t in _tensors(args[1])):
            return "sync"
        if packet in PYTHON:
            return "python"
        inputs = list(_tensors(args)) + list(_tensors(kwargs.values()))
        if packet in COPIES:
            out_device = kwargs.get("device") or (args[0].device if packet is aten.copy_ else None)
            if out_device is not None and any(t.device != torch.device(out_device) for t in inputs):
                return "python"
        if self.host and any(_storage(t) in self.host for t in inputs):
            return "host"
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.current is not None:
            kind = self._kind(func, args, kwargs)
            if kind is not None:
                self.current.counts[kind] += 1
                self.current.ops.append((kind, str(func)))
        return func(*args, **kwargs)

    def enter_call(self, label, run):
        self.current = Call(label, getattr(run, "phase", None), getattr(run, "step", None))

    def exit_call(self):
        self.calls.append(self.current)
        self.current = None


class _Entry:
    """Wraps one attention entry point of the pack so that the counter attributes ops to the call."""

    def __init__(self, inner, counter, label, dit):
        self.inner, self.counter, self.label, self.dit = inner, counter, label, dit

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        from_options = kwargs.get("transformer_options") if self.dit else args[3]
        run = (from_options or {}).get("edit_pack_run")
        nested = self.counter.current is not None
        if not nested:
            self.counter.enter_call(self.label, run)
        try:
            return self.inner(*args, **kwargs)
        finally:
            if not nested:
                self.counter.exit_call()


def host_tensors(model):
    """Tensors held by the controllers of `model` (and by objects they hold): the host-side configuration."""
    from_chain = model.model_options.get("transformer_options", {}).get("edit_pack_chain", ())
    found, seen = [], set()

    def scan(obj, depth):
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                scan(x, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for x in vars(obj).values():
                scan(x, depth + 1)
    for c in from_chain:
        scan(c, 0)
    return found


def instrument(model, counter):
    """A clone of `model` (hooks of the pack installed) whose attention entry points report to `counter`."""
    clone = model.clone()
    options = clone.model_options["transformer_options"]
    replace = options.get("patches_replace", {})
    for attn, setter in (("attn1", clone.set_model_attn1_replace), ("attn2", clone.set_model_attn2_replace)):
        for key, hook in list(replace.get(attn, {}).items()):
            setter(_Entry(hook, counter, f"{attn}.{key}", False), *key)
    options = clone.model_options["transformer_options"]
    if "optimized_attention_override" in options:
        options["optimized_attention_override"] = _Entry(options["optimized_attention_override"], counter, "joint",
                                                         True)
    return clone
