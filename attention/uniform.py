"""Uniform attention maps (UAM): the text-attention softmax of chosen branch rows becomes a constant map.

U-Net cross-attention: every query attends 1/N to each of the N text tokens, so the output is the mean of V over
the tokens, independent of Q (the paper's S_uniform = 1/N).

Flux / MMDiT joint attention (our extension; the paper has U-Net only): for image-token queries the probability
mass p_txt = sum_{j in text} p_j that a query gives to the text keys is kept, but spread evenly over the text
keys, so the text part of the output becomes p_txt * mean_text(V); the image-key part of the softmax is left as
it is. This is the smallest change that makes the text map uniform while keeping each row a distribution and the
image-to-image attention (the layout) untouched. Text-token queries are left unchanged.
"""
import torch

from .controller import Controller
from .masked import as_4d

BRANCH_CHOICES = ("aux", "all", "target", "source")
INVERSION_PHASES = ("invert", "capture")
# Joint attention is computed in query chunks so the probabilities of one chunk stay around this many elements.
CHUNK_ELEMENTS = 1 << 26


class UniformAttention(Controller):
    """Replaces text attention by uniform maps on the rows of `branches` ("aux", "all", "target", "source").

    during_inversion: also on every row while the Invert node runs (the paper inverts the auxiliary branch with
    uniform maps), whatever `branches` says.
    """
    kinds = ("cross", "joint")
    technique = "Uniform Attention Maps"

    def __init__(self, branches="aux", during_inversion=True):
        if branches not in BRANCH_CHOICES:
            raise ValueError(f"branches must be one of {BRANCH_CHOICES}, got {branches!r}")
        self.branches, self.during_inversion = branches, bool(during_inversion)

    def idle_without_run(self):  # "all" and "target" act on every row of a plain sampler's batch
        return self.technique if self.branches in ("aux", "source") else None

    def chosen_rows(self, call):
        phase = call.run.phase if call.run is not None else "sample"
        if self.branches == "all" or (self.during_inversion and phase in INVERSION_PHASES):
            return list(range(call.q.shape[0]))
        return call.rows(self.branches)

    def wants(self, call):
        return call.kind in self.kinds and bool(self.chosen_rows(call))

    def after(self, call, out):
        rows = call.index(self.chosen_rows(call))
        out = out.clone()
        keep = call.key_keep  # the zeros padding a shorter prompt are not text tokens of its map
        keep = None if keep is None else keep[rows][:, call.txt]
        if call.kind == "cross":
            out[rows] = uniform_cross(call.v[rows], out.shape[2], keep).to(out.dtype)
        else:
            img = call.img
            out[rows, :, img] = uniform_text_joint(call.q[rows][:, :, img], call.k[rows], call.v[rows], call.txt,
                                                   call.scale, _rows_mask(call, rows), keep).to(out.dtype)
        return out

    def __repr__(self):
        return f"UniformAttention({self.branches}, during_inversion={self.during_inversion})"


def text_mean(v, keep=None):
    """Mean of V [B, H, N, D] over its N tokens, [B, H, 1, D]; keep [B, N] (bool): over the kept tokens only."""
    if keep is None:
        return v.mean(dim=2, keepdim=True)
    w = keep.to(v.dtype)[:, None, :, None]
    return (v * w).sum(dim=2, keepdim=True) / w.sum(dim=2, keepdim=True).clamp(min=1)


def uniform_cross(v, n_queries, keep=None):
    """Cross-attention output with the map 1/N: mean of V [B, H, N, D] over tokens (the kept ones, keep [B, N]),
    for every query."""
    return text_mean(v, keep).expand(v.shape[0], v.shape[1], n_queries, v.shape[3])


def _rows_mask(call, rows):
    """The call's attention mask for the chosen rows and the image queries, 4-d and broadcastable (not expanded)."""
    mask = call.bias()
    if mask is None:
        return None
    mask = as_4d(mask)
    if mask.shape[0] == call.q.shape[0]:
        mask = mask[rows]
    return mask[:, :, call.img] if mask.shape[2] == call.q.shape[2] else mask


def _without(t, part, dim):
    """t without the slice `part` along `dim` (the keys other than the text keys), as a view where possible."""
    length = t.shape[dim]
    start, stop = part.start or 0, length if part.stop is None else part.stop
    if start == 0:
        return t.narrow(dim, stop, length - stop)
    if stop == length:
        return t.narrow(dim, 0, start)
    return torch.cat([t.narrow(dim, 0, start), t.narrow(dim, stop, length - stop)], dim)


def uniform_text_joint(q, k, v, txt, scale, mask=None, text_keep=None):
    """Joint-attention output of queries q [B, H, Lq, D] over all keys k, v [B, H, L, D], with the attention to the
    text keys (slice `txt`) replaced by its total mass spread evenly over them (over the kept ones, text_keep
    [B, n_txt]: the mask must then exclude the others). Exact, in float32, chunked."""
    n_txt = txt.stop - txt.start
    v32 = v.float()
    v_mean = text_mean(v32[:, :, txt], text_keep) if n_txt else v32[:, :, :1] * 0  # [B, H, 1, D]
    v_rest = _without(v32, txt, 2)
    chunk = max(1, CHUNK_ELEMENTS // max(1, q.shape[0] * q.shape[1] * k.shape[2]))
    outs = []
    for start in range(0, q.shape[2], chunk):
        sl = slice(start, start + chunk)
        logits = (q[:, :, sl].float() @ k.float().transpose(-1, -2)) * scale
        if mask is not None:
            m = mask[:, :, sl] if mask.shape[2] > 1 else mask
            logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
        probs = logits.softmax(dim=-1)
        text_mass = probs[..., txt].sum(dim=-1, keepdim=True)
        outs.append(_without(probs, txt, -1) @ v_rest + text_mass * v_mean)
    return torch.cat(outs, dim=2)
