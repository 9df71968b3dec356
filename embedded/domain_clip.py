"""Domain CLIP: a small contrastive image-text model for the shapes domain (the stand-in for CLIP/CLIP-vision).

Image tower: a small CNN, 64x64 RGB -> 8x8 grid of patch features -> attention-pooled global embedding.
Text tower: frozen MiniLM token states (the embedded CLIP object's CLIPTextEncode output, [N, 32, 384]) ->
one transformer layer -> mean pool -> embedding. Both embeddings are L2-normalised; similarity is their dot
product (times exp(logit_scale) for training). Plain torch: this model is the pack's own, not a ComfyUI class.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

EMBED = 128
WIDTH = 128


class ImageTower(nn.Module):
    """[B,H,W,3] in [0,1] (ComfyUI IMAGE) -> (global [B,EMBED], patches [B,(H/8)*(W/8),WIDTH])."""

    def __init__(self, width=WIDTH, embed=EMBED):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w // 4, 3, padding=1), nn.GELU(),
            nn.Conv2d(w // 4, w // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w // 2, w // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
        )
        self.pos = nn.Parameter(torch.zeros(1, 64, w))
        self.block = nn.TransformerEncoderLayer(w, 4, 2 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.query = nn.Parameter(torch.zeros(1, 1, w))
        self.pool = nn.MultiheadAttention(w, 4, batch_first=True)
        self.proj = nn.Linear(w, embed)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2) * 2 - 1
        f = self.stem(x).flatten(2).transpose(1, 2)  # [B, L, w]
        if f.shape[1] == self.pos.shape[1]:
            f = f + self.pos
        f = self.block(f)
        g, _ = self.pool(self.query.expand(f.shape[0], -1, -1), f, f)
        return F.normalize(self.proj(g[:, 0]), dim=-1), f


class TextTower(nn.Module):
    """MiniLM token states [B, L, 384] -> [B, EMBED]."""

    def __init__(self, in_dim=384, width=WIDTH, embed=EMBED):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.block = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.proj = nn.Linear(width, embed)

    def forward(self, tokens):
        return F.normalize(self.proj(self.block(self.inp(tokens)).mean(dim=1)), dim=-1)


class DomainClip(nn.Module):
    """The two towers plus a learned temperature."""

    def __init__(self):
        super().__init__()
        self.image = ImageTower()
        self.text = TextTower()
        self.logit_scale = nn.Parameter(torch.tensor(2.66))

    def encode_image(self, images):
        """Global embeddings [B, EMBED] (unit norm) of ComfyUI IMAGE tensors."""
        return self.image(images)[0]

    def patch_features(self, images):
        """Patch-grid features [B, 64, WIDTH] (8x8 grid for 64x64 images): query features for region masks."""
        return self.image(images)[1]

    def encode_text(self, token_states):
        """Embeddings [B, EMBED] (unit norm) of CLIPTextEncode token states [B, 32, 384]."""
        return self.text(token_states)

    def similarity(self, images, token_states):
        """Cosine similarity of each image with its paired text, [B]."""
        return (self.encode_image(images) * self.encode_text(token_states)).sum(-1)


def load(path):
    """A DomainClip in eval mode from shipped fp16 safetensors."""
    from safetensors.torch import load_file
    m = DomainClip()
    m.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return m.eval()


def save(model, path, meta=None):
    from safetensors.torch import save_file
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"info": json.dumps(meta or {})})


def scorer(path=None):
    """score(image [H, W, 3] numpy in [0, 1], prompt) -> cosine similarity with the shipped domain CLIP."""
    from . import paths, text_encoder
    model, clip = load(path or paths.DOMAIN_CLIP), text_encoder.build_clip()

    @torch.no_grad()
    def score(image, prompt):
        tokens, _ = text_encoder.encode(clip, [prompt])
        return float(model.similarity(torch.as_tensor(image, dtype=torch.float32)[None], tokens.float()))
    return score
