"""The embedded domain's frozen encoders for the Learnable Region Mask: domain CLIP image patches and embeddings,
MiniLM instruction token states. Used by the node at run time and by embedded/train_region_predictor.py."""
import os

import torch
import torch.nn.functional as F

from . import dataset, domain_clip, paths, text_encoder


class DomainEncoders:
    """Domain CLIP (image patches, embeddings) + MiniLM (instruction token states with a padding mask)."""

    def __init__(self, clip_model=None, text_clip=None, clip_path=None):
        if clip_model is None:
            path = clip_path or paths.DOMAIN_CLIP
            if not os.path.exists(path):
                raise FileNotFoundError(f"domain CLIP weights not found: {path}; train them with "
                                        "`python -m embedded.train_domain_clip`")
            clip_model = domain_clip.load(path)
        self.clip = clip_model.eval().requires_grad_(False)
        self.text_clip = text_clip or text_encoder.build_clip()
        self._phrases = {}

    def tokens(self, prompts, chunk=64):
        """(token states [N, 32, 384], padding mask [N, 32] bool) of each prompt's first 32-token chunk.

        Prompts are encoded `chunk` at a time as the sections of one token dict (CLIPTextEncode's own batching of
        long prompts; all weights 1.0, so every section is encoded exactly as on its own)."""
        states, pads = [], []
        for i in range(0, len(prompts), chunk):
            toks = [self.text_clip.tokenize(p) for p in prompts[i:i + chunk]]
            key = next(iter(toks[0]))
            sections = [t[key][0] for t in toks]
            ids = torch.tensor([[int(w[0]) for w in sec] for sec in sections])
            c = self.text_clip.encode_from_tokens({key: sections}).float()
            states.append(c.reshape(len(sections), ids.shape[1], -1))
            pads.append(ids == text_encoder.SPECIAL_TOKENS["pad"])
        return torch.cat(states), torch.cat(pads)

    def patches(self, images):
        return self.clip.patch_features(images.float())

    def encode_image(self, images):
        return self.clip.encode_image(images.float())

    def phrase_embedding(self, phrase):
        """Prompt-ensembled text embedding of an object phrase ('red circle', 'square', '' = any object): the mean
        of the domain CLIP embeddings of every single-object caption that matches it, renormalised."""
        if phrase not in self._phrases:
            words = phrase.split()
            caps = [dataset.caption({"background": b, "objects": [{"shape": s, "color": c}]})
                    for b in dataset.COLORS for c in dataset.COLORS for s in dataset.SHAPES
                    if c != b and all(w in (c, s) for w in words)]
            if not caps:
                raise ValueError(f"instruction: the embedded domain knows colours {dataset.COLORS} and shapes "
                                 f"{dataset.SHAPES}; '{phrase}' names none of them")
            tok = self.tokens(caps)[0]
            if tok.shape[-1] != text_encoder.HIDDEN:
                raise ValueError(f"clip: the embedded domain CLIP reads MiniLM token states ({text_encoder.HIDDEN} "
                                 f"wide), this CLIP gives {tok.shape[-1]}; leave clip unconnected or use the CLIP "
                                 "of Load Embedded Edit Model")
            with torch.no_grad():
                e = self.clip.encode_text(tok)
            self._phrases[phrase] = F.normalize(e.mean(0), dim=-1)
        return self._phrases[phrase]
