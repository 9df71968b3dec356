"""Learnable-region generator (Beyond Editing Pairs, sec. 3.2): instruction-conditioned patch probability map.

Image patch features F_img [B, N, D_img] are the queries of a cross-attention over the instruction token features
F_ins [B, T, D_txt] (keys/values; padded tokens masked) -> F_Editedimg (eq. 1); self-attention over the fused
patches -> F_imgRegion (eq. 2); a token-wise MLP + sigmoid -> P_region [B, N] (eq. 3). Backbone-agnostic: two
input projections map any feature widths to the model width (the paper makes both 768 wide instead).
Deviation from the paper's bare formulas (documented in docs/region_mask.md): residual connections and
pre-LayerNorms around both attentions, as in a standard transformer block, so short CPU training is stable.
`sem` is the paper's semantic-alignment network (pooled fused features -> CLIP embedding space), used only in
training. `to_mask` thresholds the grid map and resizes it to a pixel MASK; the soft map is returned as well.
"""
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RegionPredictor(nn.Module):
    def __init__(self, img_dim, txt_dim, width=128, heads=4, clip_dim=128, residual=True):
        super().__init__()
        self.config = dict(img_dim=img_dim, txt_dim=txt_dim, width=width, heads=heads, clip_dim=clip_dim,
                           residual=residual)
        self.img_in = nn.Linear(img_dim, width)
        self.txt_in = nn.Linear(txt_dim, width)
        self.norm_q, self.norm_kv, self.norm_s, self.norm_m = (nn.LayerNorm(width) for _ in range(4))
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, 1))
        self.sem = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, clip_dim))
        self.residual = residual

    def fuse(self, img_feats, txt_feats, txt_pad=None):
        """(F_img projected [B,N,W], F_Editedimg [B,N,W]): eq. 1. txt_pad [B,T] bool, True = padding token."""
        q = self.img_in(img_feats)
        kv = self.norm_kv(self.txt_in(txt_feats))
        if txt_pad is not None and bool(txt_pad.all(dim=1).any()):
            raise ValueError("every instruction needs at least one non-padding token")
        fused, _ = self.cross(self.norm_q(q), kv, kv, key_padding_mask=txt_pad, need_weights=False)
        return q, (q + fused if self.residual else fused)

    def forward(self, img_feats, txt_feats, txt_pad=None, return_features=False):
        """P_region [B, N] in (0, 1); with return_features also (F_img, F_Editedimg, F_imgRegion)."""
        f_img, f_edit = self.fuse(img_feats, txt_feats, txt_pad)
        h = self.norm_s(f_edit)
        s, _ = self.self_attn(h, h, h, need_weights=False)
        f_region = f_edit + s if self.residual else s
        prob = torch.sigmoid(self.mlp(self.norm_m(f_region))[..., 0])
        return (prob, (f_img, f_edit, f_region)) if return_features else prob

    def semantic(self, feats):
        """sem(F): mean-pooled patch features -> unit vector in the CLIP embedding space (eqs. 4-5)."""
        return F.normalize(self.sem(feats.mean(dim=1)), dim=-1)


def grid_shape(n, aspect=1.0):
    """(h, w) of an N-patch grid for an image of aspect width/height (square grids when aspect=1)."""
    h = max(1, int(round(math.sqrt(n / aspect))))
    for hh in sorted(range(1, n + 1), key=lambda v: abs(v - h)):
        if n % hh == 0:
            return hh, n // hh
    return 1, n


def to_mask(prob, size, threshold=0.5, aspect=None):
    """Patch map [B, N] -> (binary MASK [B, H, W], soft MASK [B, H, W]) at pixel size (H, W).

    The soft map is bilinearly upsampled; the binary mask thresholds the soft map at pixel level."""
    H, W = int(size[0]), int(size[1])
    gh, gw = grid_shape(prob.shape[1], W / H if aspect is None else aspect)
    soft = F.interpolate(prob.float().reshape(-1, 1, gh, gw), size=(H, W), mode="bilinear", align_corners=False)
    soft = soft[:, 0].clamp(0, 1)
    return (soft > threshold).float(), soft


def save(model, path, meta=None):
    """fp16 safetensors with the constructor config in the metadata."""
    from safetensors.torch import save_file
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"config": json.dumps(model.config), "info": json.dumps(meta or {})})


def load(path):
    """A RegionPredictor (eval mode, fp32) from `save`'s file."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = RegionPredictor(**config)
    model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return model.eval()
