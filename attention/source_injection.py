"""Source attention injection: the target branch's image attention reads the source branch's features.

mode "key+value" (MasaCtrl, mutual self-attention): the target's image queries attend to the source's image keys
and values. mode "value" (RF-Solver-Edit feature sharing): only the values of the image tokens are the source's;
the target's queries and keys (so its attention map) stay its own. mode "query+key" (Plug-and-Play self-attention
injection): the image tokens' queries and keys are the source's, so the target uses the source's attention map on
its own values: the layout stays, the appearance may change (recolouring). In Flux joint attention the text tokens'
Q/K/V stay the target's. Acts on the Edit Sampler's target rows, in the chosen layers, for steps in [start, end); a
target row of the cond (uncond) pass reads the source row of the same pass and image index, falling back to the
source cond pass when the call has no source uncond rows. Each pass pairs within itself, so it acts the same when
ComfyUI runs cond and uncond in separate model calls.

Layers are names in forward order (U-Net self-attention "output.3.0", Flux "double.2" / "single.17"); `select`
picks them by group and depth fraction; `paper_layers` / `paper_steps` give each paper's recipe on any model and
step count.
"""
import math

from .controller import Controller
from .hooks import model_family, self_attention_layers

MODES = ("key+value", "value", "query+key")
GROUPS = ("paper default", "all", "later: U-Net decoder / Flux single blocks",
          "earlier: U-Net encoder+middle / Flux double blocks")

# The papers' recipes (numbers from the papers' released code; see docs/cpam.md, docs/proedit.md)
MASACTRL_START = (4, 50)          # mutual self-attention from step 4 of 50 on ...
MASACTRL_LAYER = (10, 16)         # ... in transformer blocks 10.. of SD1.5's 16 (SDXL: 44 of 70 = same fraction)
RF_EDIT_INJECT = (3, 25)          # V shared in the first 3 of 25 steps ...
RF_EDIT_SINGLE = (20, 38)         # ... in FLUX single blocks 20..37 (the code's `id > 19`)
PNP_STEPS = (25, 50)              # Plug-and-Play: self-attention Q/K in the first half of the steps ...
PNP_DECODER = (1, 9)              # ... in SD1.5's decoder self-attention from the 2nd of its 9 on


def scaled(part, total):
    """round(part[0] / part[1] * total), halves up."""
    return int(math.floor(part[0] * total / part[1] + 0.5))


def paper_steps(mode, total):
    """(start, end) of the paper's step range scaled to `total` steps; end is exclusive."""
    if mode == "key+value":
        return scaled(MASACTRL_START, total), total
    return 0, max(1, scaled(PNP_STEPS if mode == "query+key" else RF_EDIT_INJECT, total))


def group_layers(names, group):
    """The layers of a named group, forward order kept."""
    if group == "all":
        return tuple(names)
    later = tuple(n for n in names if n.startswith(("output.", "single.")))
    if group.startswith("later"):
        return later
    if group.startswith("earlier"):
        return tuple(n for n in names if n not in later)
    raise ValueError(f"layers must be one of {GROUPS}, got '{group}'")


def from_fraction(layers, fraction):
    """The layers from index round(fraction * count) on."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"layer_fraction must lie in [0, 1], got {fraction}")
    return tuple(layers[scaled((fraction, 1.0), len(layers)):])


def paper_layers(names, mode, family):
    """The paper's layers: value (RF-Solver-Edit) = Flux single blocks 20/38 on, U-Net decoder self-attention;
    key+value (MasaCtrl) = all self-attention (U-Net) / joint (Flux) layers from 10/16 of them on; query+key
    (Plug-and-Play) = U-Net decoder self-attention from 1/9 of it on, and (our extension) every Flux single block
    (the later half of the joint layers on families without single blocks)."""
    if mode == "query+key":
        later = group_layers(names, GROUPS[2])
        if family == "unet":
            return later[scaled(PNP_DECODER, len(later)):]
        return later or names[len(names) // 2:]
    if mode == "value":
        if family == "dit":  # SD3 / Qwen-Image have no single blocks: the same share of their joint layers
            singles = group_layers(names, GROUPS[2]) or names
            return tuple(singles[scaled(RF_EDIT_SINGLE, len(singles)):])
        return group_layers(names, GROUPS[2])
    return tuple(names[scaled(MASACTRL_LAYER, len(names)):])


def select(model, mode, group, fraction=0.0):
    """Layer names of `model` the injection acts on, in forward order; a clear error if none."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
    family = model_family(model)
    names = self_attention_layers(model)
    if group == "paper default":
        chosen = paper_layers(names, mode, family)
    else:
        chosen = from_fraction(group_layers(names, group), fraction)
    if not chosen:
        raise ValueError(f"layers: '{group}' with layer_fraction {fraction} selects none of this model's "
                         f"{len(names)} attention layers; pick another group or a smaller fraction")
    return chosen


class SourceInjection(Controller):
    """Target image K/V (key+value) or V (value) from the source branch, in `layers`, for steps in [start, end).

    start / end None: the paper's range for the mode, scaled to the Edit Sampler's step count (paper_steps).
    """
    technique = "Source Attention Injection"
    kinds = ("self", "joint")

    def __init__(self, mode, layers, start=None, end=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end_step ({end}) must be greater than start_step ({start}); the range is "
                             f"start_step <= step < end_step")
        self.mode, self.start, self.end = mode, start, end
        self.layers = frozenset(layers)

    def steps(self, total):
        """The (start, end) range for a run of `total` steps."""
        auto = paper_steps(self.mode, total)
        return (auto[0] if self.start is None else self.start), (auto[1] if self.end is None else self.end)

    def wants(self, call):
        if call.kind not in self.kinds or call.layer not in self.layers or call.run is None:
            return False
        if call.run.phase != "edit" or "target" not in call.roles:
            return False
        start, end = self.steps(call.run.total_steps)
        return call.step is not None and start <= call.step < end

    def pairs(self, call):
        """(target rows, source rows) per pass, same length and image order."""
        out = []
        for cond in (True, False):
            targets = call.rows("target", cond)
            if not targets:
                continue
            sources = call.rows("source", cond) or call.rows("source", True)
            if len(sources) != len(targets):
                raise ValueError(
                    "Source Attention Injection needs the Edit Sampler's source branch in the same model call as the "
                    f"target (found {len(sources)} source and {len(targets)} target rows at layer {call.layer}). Use "
                    "this MODEL only in the Edit Sampler (not in a KSampler)")
            out.append((targets, sources))
        return out

    def before(self, call):
        img = call.img
        q = call.q.clone() if self.mode == "query+key" else None
        k = call.k.clone() if self.mode != "value" else None
        v = call.v.clone() if self.mode != "query+key" else None
        for targets, sources in self.pairs(call):
            t, s = call.index(targets), call.index(sources)
            for new, old in ((q, call.q), (k, call.k), (v, call.v)):
                if new is not None:
                    new[t, :, img] = old[s][:, :, img]
        call.set_qkv(q=q, k=k, v=v)

    def __repr__(self):
        return f"SourceInjection({self.mode}, steps {self.start}..{self.end}, {len(self.layers)} layers)"
