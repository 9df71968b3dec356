"""Selectors of batch rows or token positions that need no host data on the device.

Indexing a tensor with a Python list makes a host tensor and copies it to the device on every use. Positions in
arithmetic progression (the common case: the rows of one branch and pass) become a slice (a view, no copy);
others an index tensor built on the device from ranges, once per run (cached in the run's store).
"""
import torch

INDEX_KEY = "positions_index"


def selector(positions, device, store=None):
    """A slice or a device index tensor selecting `positions` (ints, in order) along one dimension."""
    positions = tuple(int(p) for p in positions)
    if not positions:
        return slice(0, 0)
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(positions, positions[1:])):
        return slice(positions[0], positions[-1] + 1, step)
    key = (positions, torch.device(device))
    cache = store.setdefault(INDEX_KEY, {}) if store is not None else {}
    index = cache.get(key)
    if index is None:
        index = cache[key] = torch.cat([torch.arange(p, p + 1, device=device) for p in positions])
    return index
