"""Attention record: keeps self-attention of source and target rows and cross-attention of chosen text tokens of
the target rows, with their autograd graph, while a latent optimiser's forward pass runs.

Idle unless run.store[RECORD_KEY] exists (the optimiser puts an empty record there for its own forward pass and
takes it back afterwards), so the ordinary sampling passes cost nothing. Probabilities are computed explicitly
from q and k for the chosen layers only: head-averaged, softmax over all keys of the call (U-Net self: image
keys; U-Net cross: the text keys; MMDiT joint: text + image keys for the self part, text keys only for the
cross part, as in AttentionCapture).
"""
import torch

from .controller import Controller

RECORD_KEY = "unifyedit_record"
SCALES = {"1/1": (1,), "1/2": (2,), "1/4": (4,), "1/8": (8,), "1/4+1/8": (4, 8), "all": None}


def new_record():
    """The empty record the optimiser places in run.store for one forward pass."""
    return {"sa": {}, "ca": {}}


def layer_scale(call):
    """Downscale factor of the call's token grid against the latent (SD1.5 at 512 px: 64/16 = 4)."""
    return max(int(round(call.latent_hw[0] / max(call.grid[0], 1))), 1)


class AttentionRecord(Controller):
    """Records attention for the UnifyEdit losses.

    sa_scales / ca_scales: grid downscale factors whose layers feed each loss (None: every layer).
    layers: optional set of layer names ("output.3.0", "double.5") that a layer must also be in.
    tokens: text-token positions of the edit words (cross-attention columns kept).
    dtype: precision of the explicit probabilities (float32 is safest; float16 halves their memory).
    rec["sa"][layer] = (A_src [n, L, L] without grad, A_tgt [n, L, L] with grad, grid)
    rec["ca"][layer] = (maps [n, L, len(tokens)] with grad, grid)
    """
    kinds = ("self", "cross", "joint")

    def __init__(self, tokens, sa_scales=(4,), ca_scales=(4,), layers=None, dtype=torch.float32):
        self.tokens = tuple(int(t) for t in tokens)
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

    def after(self, call, out):
        rec = call.run.store[RECORD_KEY]
        tgt_rows = call.rows("target", True)
        if not tgt_rows:
            return out
        tgt = call.index(tgt_rows)
        img = call.img
        if self._wants_sa(call):
            src_rows = call.rows("source", True)
            if len(src_rows) == len(tgt_rows):
                src = call.index(src_rows)
                mask = call.bias()
                if mask is not None and mask.shape[0] == call.q.shape[0]:
                    mask_src, mask_tgt = mask[src], mask[tgt]
                else:
                    mask_src = mask_tgt = mask
                with torch.no_grad():
                    a_src = self._probs(call.q[src], call.k[src], call.scale, mask_src)[:, :, img, img].mean(1)
                a_tgt = self._probs(call.q[tgt], call.k[tgt], call.scale, mask_tgt)[:, :, img, img].mean(1)
                rec["sa"][call.layer] = (a_src, a_tgt, tuple(call.grid))
        if self._wants_ca(call) and self.tokens:
            if max(call.text_columns(self.tokens)) >= call.txt.stop - call.txt.start:
                raise ValueError(f"edit_tokens: token position {max(self.tokens)} is beyond the "
                                 f"{call.txt.stop - call.txt.start} text tokens of the conditioning")
            q = call.q[tgt][:, :, img]
            k = call.k[tgt][:, :, call.txt]
            probs = self._probs(q, k, call.scale, call.text_bias(tgt)).mean(1)  # [n, L_img, T]
            rec["ca"][call.layer] = (probs[..., call.index(call.text_columns(self.tokens))], tuple(call.grid))
        return out
