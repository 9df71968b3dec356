"""Attention record: keeps the self-attention of the source rows (no graph) or the self-attention and the
cross-attention of chosen text tokens of the target rows (with their autograd graph) while one of a latent
optimiser's forward passes runs.

Idle unless run.store[RECORD_KEY] exists (the optimiser puts a record there for its own forward pass and takes
it back afterwards), so the ordinary sampling passes cost nothing. Probabilities are computed explicitly from q
and k for the chosen layers only: head-averaged, softmax over all keys of the call (U-Net self: image keys; U-Net
cross: the text keys; MMDiT joint: text + image keys for the self part, text keys only for the cross part, as in
AttentionCapture). With `checkpoint`, the per-head probabilities of a target map are not kept for backward but
recomputed from q and k there (torch.utils.checkpoint): the graph holds the head-averaged map only ("auto": only
where the per-head probabilities would hold at least CHECKPOINT_BYTES; below that the recomputation costs more
time than the memory is worth). Once every
layer in the record's `expect` was seen, the pass is stopped (StopForward): later layers cannot reach the losses.
"""
import torch
from torch.utils.checkpoint import checkpoint

from .controller import Controller

RECORD_KEY = "unifyedit_record"
CHECKPOINT_BYTES = 2 ** 20  # "auto" checkpoints a map whose per-head probabilities would keep at least this much
SCALES = {"1/1": (1,), "1/2": (2,), "1/4": (4,), "1/8": (8,), "1/4+1/8": (4, 8), "all": None}


class StopForward(Exception):
    """Raised inside a forward pass once the caller has all it needs from it; the caller catches it."""


def new_record(mode="target", expect=None):
    """The empty record the optimiser places in run.store for one forward pass.

    mode "source": the source rows' self-attention maps, no graph; "target": the target rows' maps with graph.
    expect: (kind, layer name) pairs after which the pass may stop (None: run to the end); `seen` collects the
    recorded calls' pairs; `dtype` becomes the model's compute dtype (q's)."""
    return {"mode": mode, "sa": {}, "ca": {}, "seen": set(), "expect": expect, "dtype": None}


def layer_scale(call):
    """Downscale factor of the call's token grid against the latent (SD1.5 at 512 px: 64/16 = 4)."""
    return max(int(round(call.latent_hw[0] / max(call.grid[0], 1))), 1)


class AttentionRecord(Controller):
    """Records attention for the UnifyEdit losses.

    sa_scales / ca_scales: grid downscale factors whose layers feed each loss (None: every layer).
    layers: optional set of layer names ("output.3.0", "double.5") that a layer must also be in.
    tokens: text-token positions of the edit words (cross-attention columns kept).
    dtype: precision of the explicit probabilities (float32 is safest; float16 halves their memory).
    checkpoint: True / False / "auto": recompute the per-head probabilities of the target maps in backward instead
    of keeping them (auto: for maps of at least CHECKPOINT_BYTES per head set).
    rec["sa"][layer] = (A [n, L, L], grid): the source's without grad (mode "source"), the target's with grad
    rec["ca"][layer] = (maps [n, L, len(tokens)] with grad, grid)  (mode "target")
    """
    kinds = ("self", "cross", "joint")

    def __init__(self, tokens, sa_scales=(4,), ca_scales=(4,), layers=None, dtype=torch.float32, checkpoint="auto"):
        self.tokens = tuple(int(t) for t in tokens)
        self.checkpoint = checkpoint
        self.sa_scales = None if sa_scales is None else frozenset(sa_scales)
        self.ca_scales = None if ca_scales is None else frozenset(ca_scales)
        self.layers = None if layers is None else frozenset(layers)
        self.dtype = dtype

    def _wants_sa(self, call):
        return call.kind in ("self", "joint") and (self.sa_scales is None or layer_scale(call) in self.sa_scales)

    def _wants_ca(self, call):
        return call.kind in ("cross", "joint") and (self.ca_scales is None or layer_scale(call) in self.ca_scales)

    def wants(self, call):
        return (call.run is not None and RECORD_KEY in call.run.store
                and (self.layers is None or call.layer in self.layers)
                and (self._wants_sa(call) or self._wants_ca(call)))

    def _probs(self, q, k, scale, mask=None):
        logits = (q.to(self.dtype) @ k.to(self.dtype).transpose(-1, -2)) * scale
        if mask is not None:
            logits = logits + mask.to(self.dtype)
        return logits.softmax(-1)

    def _mean_probs(self, q, k, scale, mask, queries, keys):
        """Head-averaged probabilities [n, queries, keys] (softmax over all of k's tokens)."""
        def mean(q, k):
            return self._probs(q, k, scale, mask)[:, :, queries, keys].mean(1)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad) and self._checkpoints(q, k):
            return checkpoint(mean, q, k, use_reentrant=False)
        return mean(q, k)

    def _checkpoints(self, q, k):
        if self.checkpoint != "auto":
            return bool(self.checkpoint)
        return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * self.dtype.itemsize >= CHECKPOINT_BYTES

    def after(self, call, out):
        rec = call.run.store[RECORD_KEY]
        rec["dtype"] = call.q.dtype
        role = "source" if rec["mode"] == "source" else "target"
        rows = call.rows(role, True)
        if rows:
            self._record(call, rec, role, call.index(rows))
        rec["seen"].add((call.kind, call.layer))
        if rec["expect"] is not None and rec["seen"] >= rec["expect"]:
            raise StopForward
        return out

    def _record(self, call, rec, role, rows):
        img = call.img
        mask = call.bias()  # the model's mask and the keys that pad a prompt
        if mask is not None and mask.shape[0] == call.q.shape[0]:
            mask = mask[rows]
        if self._wants_sa(call):
            with torch.set_grad_enabled(torch.is_grad_enabled() and role == "target"):
                rec["sa"][call.layer] = (self._mean_probs(call.q[rows], call.k[rows], call.scale, mask, img, img),
                                         tuple(call.grid))
        if role == "target" and self._wants_ca(call) and self.tokens:
            columns = call.text_columns(self.tokens)  # shifted by text the model puts first (Flux.2)
            if max(columns) >= call.txt.stop - call.txt.start:
                raise ValueError(f"edit_tokens: token position {max(self.tokens)} is beyond the "
                                 f"{call.txt.stop - call.txt.start} text tokens of the conditioning")
            probs = self._mean_probs(call.q[rows][:, :, img], call.k[rows][:, :, call.txt], call.scale,
                                     call.text_bias(rows), slice(None), call.index(columns))  # [n, L_img, tokens]
            rec["ca"][call.layer] = (probs, tuple(call.grid))
