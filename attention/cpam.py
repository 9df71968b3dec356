"""CPAM controllers: self-attention preservation adaptation and localized cross-attention extraction.

Both act on the target rows of the edit sampler's batch during the "edit" phase (other rows, other phases and runs
without a RunState pass through). The source K/V come from the source rows of the same call (the edit sampler
runs source and target in one batch); a target row of the cond (uncond) pass is paired with the source row of the
same pass and the same image position, falling back to the source cond row. Both pair rows within one pass
(the extraction's aux rows are in the cond pass), so they act the same when ComfyUI runs cond and uncond in
separate model calls.

Preservation (self / joint attention), for each target query (M_s, M_t resized to the layer's token grid):
  SC_bg = Att(Q, K_src, V_src) over the source background keys (M_s < 0.5),
  SC_fg = Att(Q, K_src, V_src) over the source object keys (M_s >= 0.5) if retain_object and step > T and
          layer > L, else the target's plain self-attention Att(Q, K, V),
  SC = M_t * SC_fg + (1 - M_t) * SC_bg;  mode "remove": SC = SC_bg for every query.
  step = denoising step index from the start of the schedule; layer = index over the model's self-attention
  layers (U-Net attn1, Flux double then single blocks) in forward order, 0-based. In a seeded random `fraction` of
  the layers, redrawn every step, the target keeps plain self-attention. If a key set is empty (M_s all object or
  all background) all source keys are used.
Localized extraction (cross / joint attention), target cond rows only: queries inside M_t attend to the target
prompt's K/V, queries outside to the empty prompt's K/V, taken from the aux rows (cond pass) of the same call, so
the Edit Sampler needs an aux branch with the empty prompt. Target uncond rows already attend to the negative.
Flux joint attention (text tokens first): the preservation restricts the image keys (text keys stay the target's
own), the extraction swaps the text keys/values for the aux row's; image queries only, text queries stay plain.
Reference tokens after the image tokens (FLUX.1 Kontext, FLUX.2) stay keys of every region, the row's own.
Both controllers on one joint call combine (the product of their regions) through a per-call plan.
"""
import functools

import torch

from .controller import Controller
from .masked import add_bias, as_bias, keep_any, keep_bias, masked_attention
from .token_masks import pick

PLAN = "_cpam_plan"


@functools.lru_cache(maxsize=1024)
def plain_layers(layers, fraction, seed, step):
    """The layers that keep plain self-attention at `step`: round(fraction * n) of them, drawn from (seed, step).
    layers: a tuple. Memoised: the draw runs on the host once per step, not in every attention call."""
    count = int(round(fraction * len(layers)))
    if count <= 0:
        return frozenset()
    g = torch.Generator().manual_seed(int(seed) * 1000003 + int(step or 0))
    return frozenset(layers[i] for i in torch.randperm(len(layers), generator=g)[:count].tolist())


def _row_bias(call, r):
    """The call's own attention mask (Flux) for row r and the image queries, as a broadcastable additive bias."""
    bias = as_bias(call.mask, call.q.dtype)
    if bias is None:
        return None
    if bias.shape[0] == call.q.shape[0]:
        bias = bias[r:r + 1]
    return bias[:, :, call.img] if bias.shape[2] == call.q.shape[2] else bias


def _text_region(call, r):
    """Row r's text (k, v, keep): keep masks the zeros that pad its prompt (None when unpadded)."""
    return call.k[r:r + 1, :, call.txt], call.v[r:r + 1, :, call.txt], call.text_keep(r)


def _reference(call, r):
    """Joint attention: row r's own tokens after the image tokens (FLUX.1 Kontext / FLUX.2 reference latents) as a
    key region that every CPAM region keeps, so the target never loses its reference image; None without any."""
    end = call.img.stop
    if call.kind != "joint" or end >= call.k.shape[2]:
        return None
    return call.k[r:r + 1, :, end:], call.v[r:r + 1, :, end:], None


def _pairs(call, role, cond_only):
    """(target row, partner row of `role`, image position) for the target rows of the call."""
    per = max(getattr(call.run, "per_branch", 1), 1)
    out = []
    for cond in ((True,) if cond_only else (True, False)):
        partners = call.rows(role, cond) or call.rows(role, True)
        for j, r in enumerate(call.rows("target", cond)):
            if partners:
                out.append((r, partners[j % len(partners)], j % per))
    return out


def _active(call):
    return call.run is not None and call.run.phase == "edit" and "target" in call.roles


class _Plan:
    """What the CPAM controllers want for one call: per target row, image-key and text-key regions.

    A region is (query weight [n_img], k, v, keep) over the image (or text) keys. The output of a target row's image
    queries is the sum over (image region x text region) of the weight product times the attention over the
    concatenated keys (joint) or over the one key set (self / cross).
    """

    def __init__(self):
        self.image, self.text, self.done = {}, {}, False

    def compute(self, call, out):
        rows = sorted(set(self.image) | set(self.text))
        if call.extra_bias is not None:  # its regions are other key sets than the call's: the bias cannot join
            call.warn_unmasked(f"CPAM on {call.layer}", padding=False)
        img = call.img
        out = out.clone()
        for r in rows:
            q = call.q[r:r + 1, :, img]
            extra = _row_bias(call, r)
            result = 0
            reference = _reference(call, r)
            for wi, ki, vi, keepi in self._regions(call, r, "image"):
                for wt, kt, vt, keept in self._regions(call, r, "text"):
                    k, v, bias = self._keys(call, (ki, vi, keepi), (kt, vt, keept), reference)
                    att = masked_attention(q, k, v, add_bias(bias, extra))
                    result = result + (wi * wt).to(att.dtype).view(1, 1, -1, 1) * att
            out[r:r + 1, :, img] = result.to(out.dtype)
        self.done = True
        return out

    def _regions(self, call, r, part):
        chosen = (self.image if part == "image" else self.text).get(r)
        if chosen is not None:
            return chosen
        n = call.img.stop - call.img.start
        if part == "image" and call.kind == "cross":
            return [(torch.ones(1, device=call.q.device), None, None, None)]  # no image keys in cross-attention
        if part == "text" and call.kind == "self":
            return [(torch.ones(1, device=call.q.device), None, None, None)]
        if part == "text":
            return [(torch.ones(n, device=call.q.device),) + _text_region(call, r)]
        return [(torch.ones(n, device=call.q.device), call.k[r:r + 1, :, call.img], call.v[r:r + 1, :, call.img],
                 None)]

    @staticmethod
    def _keys(call, image, text, reference=None):
        """Keys, values (text keys first, then image, then reference keys: the joint layout) and the additive bias
        of the kept keys (or None)."""
        parts = [p for p in (text, image, reference) if p is not None and p[0] is not None]
        k = torch.cat([p[0] for p in parts], 2) if len(parts) > 1 else parts[0][0]
        v = torch.cat([p[1] for p in parts], 2) if len(parts) > 1 else parts[0][1]
        if all(p[2] is None for p in parts):
            return k, v, None
        keep = torch.cat([p[2] if p[2] is not None else torch.ones(p[0].shape[2], dtype=torch.bool, device=k.device)
                          for p in parts])
        return k, v, keep_bias(keep, call.q.dtype)


def _plan(call):
    plan = call.__dict__.get(PLAN)
    if plan is None:
        plan = call.__dict__[PLAN] = _Plan()
    return plan


class _CPAMController(Controller):
    def after(self, call, out):
        plan = call.__dict__.get(PLAN)
        if plan is None or plan.done or not (plan.image or plan.text):
            return out
        return plan.compute(call, out)


class SelfAttentionPreservation(_CPAMController):
    """CPAM preservation adaptation on self-attention (U-Net) / image keys of joint attention (Flux).

    source_mask: [B, H, W] object mask M_s; target: a TargetMask giving M_t; layers: self_attention_layers(model);
    mode "change" or "remove"; retain_object, step_threshold T, layer_threshold L; plain_fraction, seed.
    """
    technique = "CPAM Self-Attention Preservation"
    kinds = ("self", "joint")

    def __init__(self, source_mask, target, layers, mode="change", retain_object=False, step_threshold=3,
                 layer_threshold=8, plain_fraction=0.1, seed=0):
        if mode not in ("change", "remove"):
            raise ValueError(f"mode must be 'change' or 'remove', got {mode!r}")
        self.source_mask, self.target, self.layers = source_mask, target, tuple(layers)
        self.index = {name: i for i, name in enumerate(self.layers)}
        self.mode, self.retain_object = mode, bool(retain_object)
        self.step_threshold, self.layer_threshold = int(step_threshold), int(layer_threshold)
        self.plain_fraction, self.seed = float(plain_fraction), int(seed)

    def wants(self, call):
        return call.kind in self.kinds and _active(call)

    def plain_at(self, step):
        return plain_layers(self.layers, self.plain_fraction, self.seed, int(step or 0))

    def object_retained(self, call):
        layer = self.index.get(call.layer, -1)
        return (self.retain_object and call.step is not None and call.step > self.step_threshold
                and layer > self.layer_threshold)

    def before(self, call):
        if self.mode == "change" and call.layer in self.plain_at(call.step):
            return
        pairs = _pairs(call, "source", cond_only=False)
        if not pairs:
            return
        ms = call.tokens(self.source_mask, torch.float32)
        mt = call.tokens(self.target.pixels(call))
        retained = self.object_retained(call)
        plan = _plan(call)
        for r, s, pos in pairs:
            obj = pick(ms, pos) >= 0.5
            ks, vs = call.k[s:s + 1, :, call.img], call.v[s:s + 1, :, call.img]
            background = (ks, vs, keep_any(~obj))  # an empty key set means all source keys
            if self.mode == "remove":
                plan.image[r] = [(torch.ones_like(obj, dtype=call.q.dtype),) + background]
                continue
            m = pick(mt, pos)
            if retained:
                foreground = (ks, vs, keep_any(obj))
            else:
                foreground = (call.k[r:r + 1, :, call.img], call.v[r:r + 1, :, call.img], None)
            plan.image[r] = [(m,) + foreground, (1 - m,) + background]


class LocalizedCrossAttention(_CPAMController):
    """CPAM localized extraction: target image queries inside M_t attend to the target prompt, outside to the
    empty prompt (the aux rows' text K/V). target: a TargetMask."""
    technique = "CPAM Localized Cross-Attention"
    kinds = ("cross", "joint")

    def __init__(self, target):
        self.target = target

    def wants(self, call):
        return call.kind in self.kinds and _active(call)

    def before(self, call):
        if not call.rows("target", True):
            return
        pairs = _pairs(call, "aux", cond_only=True)
        if not pairs:
            raise ValueError("CPAM Localized Cross-Attention needs the empty prompt: connect an empty-prompt "
                             "CONDITIONING to the Edit Sampler's aux_positive (its K/V serve the queries outside "
                             "the target mask)")
        mt = call.tokens(self.target.pixels(call))
        plan = _plan(call)
        for r, a, pos in pairs:
            m = pick(mt, pos)
            plan.text[r] = [(m,) + _text_region(call, r), (1 - m,) + _text_region(call, a)]
