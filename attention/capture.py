"""Capture controller: per-token attention maps of image queries over text tokens, kept for later use."""
import torch.nn.functional as F

from .controller import Controller


class AttentionCapture(Controller):
    """Sums head-averaged image->text attention maps, resized to the latent grid, per step.

    At every image position a map is a distribution over the text tokens (for MMDiT joint attention the
    softmax is taken over the text keys only). Stored in run.store[key][step] = [sum over layers, count].
    layers: None for every cross/joint layer, else a collection of layer names (e.g. {"double.1"}).
    steps: None for every step, else a collection of step indices. phases: run phases that record ("sample" for
    plain samplers, "capture" for an inversion's replay pass, "edit" for the edit sampler).
    """
    kinds = ("cross", "joint")

    def __init__(self, key, layers=None, steps=None, phases=("capture", "edit", "sample")):
        self.key = key
        self.phases = tuple(phases)
        self.layers = None if layers is None else frozenset(layers)
        self.steps = None if steps is None else frozenset(steps)

    def wants(self, call):
        return (call.kind in self.kinds and call.run is not None and call.run.phase in self.phases
                and (self.layers is None or call.layer in self.layers)
                and (self.steps is None or call.step in self.steps))

    def after(self, call, out):
        q = call.q[:, :, call.img].float()
        k = call.k[:, :, call.txt].float()
        logits = (q @ k.transpose(-1, -2)) * call.scale
        padding = call.text_bias()  # the zeros padding a shorter prompt get no attention
        probs = (logits if padding is None else logits + padding.float()).softmax(-1).mean(1)  # [B, n_img, T]
        maps = call.image_map(probs.transpose(1, 2))  # [B, T, h, w]
        if tuple(maps.shape[-2:]) != tuple(call.latent_hw):
            maps = F.interpolate(maps, size=tuple(call.latent_hw), mode="bilinear", align_corners=False)
        per_step = call.run.store.setdefault(self.key, {})
        if call.step in per_step:
            per_step[call.step][0] += maps
            per_step[call.step][1] += 1
        else:
            per_step[call.step] = [maps.clone(), 1]
        return out


def captured_maps(run, key, steps=None):
    """Layer- and step-averaged maps [B, T, H, W] recorded under `key`, or None if nothing was captured."""
    per_step = run.store.get(key, {})
    chosen = [s for s in sorted(per_step) if steps is None or s in steps]
    if not chosen:
        return None
    total = sum(per_step[s][0] / per_step[s][1] for s in chosen)
    return total / len(chosen)
