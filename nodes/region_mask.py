"""Node: Learnable Region Mask: IMAGE + edit instruction -> edit-region MASK (trained predictor or per-image search)."""
import os

import torch
import torch.nn.functional as F

from ..latent_ops import region_predictor, region_search
from .inputs import CATEGORY

MODES = ("trained", "per-image search")
DOMAIN_SIZE = 64  # the embedded domain's image size
_cache = {}


def _embedded_paths():
    """(domain CLIP weights, shipped region predictor weights); module-level so tests can point them elsewhere."""
    from ..embedded import paths
    return paths.DOMAIN_CLIP, os.path.join(paths.WEIGHTS_DIR, "region_predictor.safetensors")


def _embedded_encoders(clip):
    from ..embedded.domain_encoders import DomainEncoders
    clip_path = _embedded_paths()[0]
    key = ("enc", clip_path, id(clip))
    if key not in _cache:
        _cache.clear()
        _cache[key] = DomainEncoders(text_clip=clip, clip_path=clip_path)
    return _cache[key]


def _predictor(path):
    if not os.path.exists(path):
        raise ValueError(f"weights: region predictor file not found: {path}. Train the embedded one with "
                         "`python -m embedded.train_region_predictor`, or use mode 'per-image search'")
    key = ("pred", path, os.path.getmtime(path))
    if key not in _cache:
        _cache[key] = region_predictor.load(path)
    return _cache[key]


def _vision_patches(clip_vision, images):
    """CLIP_VISION penultimate hidden states without the class token: [B, N, D] on a square grid.

    crop=False: the whole image is resized to the encoder's square input (no centre crop), so the patch grid spans
    the whole image and the masks line up with it at any aspect ratio."""
    hs = clip_vision.encode_image(images, crop=False)["penultimate_hidden_states"].float()
    n = hs.shape[1]
    if int(round((n - 1) ** 0.5)) ** 2 == n - 1:
        hs = hs[:, 1:]
    elif int(round(n ** 0.5)) ** 2 != n:
        raise ValueError(f"clip_vision: {n} hidden-state tokens do not form a square patch grid")
    return hs


def _overlay(mask, image, color=(1.0, 0.0, 0.0), alpha=0.5):
    col = torch.tensor(color, dtype=image.dtype)
    m = mask[..., None].to(image.dtype) * alpha
    return image * (1 - m) + col * m


class LearnableRegionMask:
    DESCRIPTION = ("Edit region from an instruction (Beyond Editing Pairs: learnable regions). 'trained': image patch "
                   "features cross-attend to the instruction's token features, then self-attention and a token-wise "
                   "MLP + sigmoid give a patch probability map, thresholded to a MASK. 'per-image search' needs no "
                   "trained weights (CVPR'24 Learnable Regions): boxes of several sizes around salient anchor patches, "
                   "scored with the image-text model (text similarity x2 + image term x1); the best box wins. "
                   "Without CLIP_VISION the embedded shapes-domain encoders are used. Feed the MASK to KV-Mix, CPAM "
                   "or Blend nodes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("mask", "soft_mask", "overlay")
    OUTPUT_TOOLTIPS = ("Binary edit region at the image size (1 = edit).",
                       "Soft region: the probability map (trained) or score-weighted box coverage (search).",
                       "The mask over the image in red.")
    FUNCTION = "predict"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The source image."}),
                "instruction": ("STRING", {"default": "make the red circle blue", "multiline": False, "tooltip":
                                "The edit instruction, e.g. 'make the red circle blue', 'remove the square', 'add a "
                                "yellow triangle', 'change the background to green'."}),
                "mode": (list(MODES), {"default": "trained", "tooltip": "trained: the learned region predictor "
                         "(its weights must match the feature backbones). per-image search: no weights, scores "
                         "candidate boxes with the image-text model (slower; boxes, not shapes)."}),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "trained mode: probability above which a pixel is in the region."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "Image feature backbone, e.g. clip_vision_g.safetensors "
                                "(ViT-bigG/14) from CLIPVisionLoader. Absent: the embedded domain CLIP (shapes "
                                "domain only)."}),
                "clip": ("CLIP", {"tooltip": "Text encoder: instruction token features (trained mode) and pooled "
                         "phrase embeddings (search mode). Search mode needs a text encoder whose pooled output is "
                         "projected into clip_vision's image-embedding space: SDXL's CLIP or a CLIP-G file "
                         "(CLIPLoader, type stable_diffusion) with clip_vision_g.safetensors. SD1.5's and FLUX's "
                         "CLIP-L give unprojected pooled outputs and do not fit. Absent: the embedded MiniLM."}),
                "weights": ("STRING", {"default": "", "tooltip": "trained mode: path of a region predictor "
                            ".safetensors; empty = the shipped embedded-domain predictor."}),
            },
        }

    def predict(self, image, instruction, mode, threshold, clip_vision=None, clip=None, weights=""):
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
        if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError("image: expected an IMAGE [batch, height, width, 3]")
        image = image[..., :3].float().cpu()
        parsed = region_search.parse_instruction(instruction)
        if clip_vision is not None and clip is None:
            raise ValueError("clip: connect the text encoder that matches clip_vision (e.g. the checkpoint's CLIP)")
        if mode == "trained":
            mask, soft = self._trained(image, instruction, threshold, clip_vision, clip, weights)
        else:
            mask, soft = self._search(image, parsed, clip_vision, clip)
        return (mask, soft, _overlay(mask, image))

    def _features(self, image, clip_vision, clip):
        """(patch features [B, N, D], encode_image fn, crop size, encoders or None)."""
        if clip_vision is None:
            enc = _embedded_encoders(clip)
            small = F.interpolate(image.permute(0, 3, 1, 2), size=(DOMAIN_SIZE,) * 2, mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
            with torch.no_grad():
                return enc.patches(small), enc.encode_image, (DOMAIN_SIZE, DOMAIN_SIZE), enc
        with torch.no_grad():
            feats = _vision_patches(clip_vision, image)
        size = getattr(clip_vision, "image_size", 224)
        return feats, lambda x: clip_vision.encode_image(x)["image_embeds"].float(), (size, size), None

    def _trained(self, image, instruction, threshold, clip_vision, clip, weights):
        path = weights.strip() or _embedded_paths()[1]
        pred = _predictor(path)
        feats, _, _, enc = self._features(image, clip_vision, clip)
        if enc is not None:
            tok, pad = enc.tokens([instruction])
        else:
            tok = clip.encode_from_tokens(clip.tokenize(instruction)).float()
            pad = None
        cfg = pred.config
        if feats.shape[-1] != cfg["img_dim"] or tok.shape[-1] != cfg["txt_dim"]:
            raise ValueError(f"weights: this predictor was trained on image features of width {cfg['img_dim']} and "
                             f"text features of width {cfg['txt_dim']}, but the connected backbones give "
                             f"{feats.shape[-1]} and {tok.shape[-1]}. The shipped predictor is for the embedded shapes "
                             "domain; real images need a predictor trained on real image-caption pairs with these "
                             "backbones, or use mode 'per-image search'")
        b = feats.shape[0]
        with torch.no_grad():
            prob = pred(feats, tok.expand(b, -1, -1), None if pad is None else pad.expand(b, -1))
        # both backbones see the image squashed to a square, so the patch grid is square at any aspect ratio
        return region_predictor.to_mask(prob, image.shape[1:3], threshold, aspect=1.0)

    def _search(self, image, parsed, clip_vision, clip):
        feats, encode_image, crop, enc = self._features(image, clip_vision, clip)
        grid = region_predictor.grid_shape(feats.shape[1])
        size = tuple(image.shape[1:3])
        if parsed["op"] == "background":
            pairs = [region_search.background_region(f, grid, size) for f in feats]
            return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        phrase = parsed["source"] if parsed["op"] in ("change", "remove") else ""
        if enc is not None:
            text_emb = enc.phrase_embedding(phrase)
        else:
            _, pooled = clip.encode_from_tokens(clip.tokenize(f"a photo of {phrase or 'an object'}"),
                                                return_pooled=True)
            text_emb = pooled[0].float()
        masks, softs = [], []
        with torch.no_grad():
            for i in range(image.shape[0]):
                if enc is None:
                    e_dim = encode_image(image[i:i + 1]).shape[-1]
                    if e_dim != text_emb.shape[-1]:
                        raise ValueError(f"clip: pooled text width {text_emb.shape[-1]} differs from clip_vision's "
                                         f"image_embeds width {e_dim}; connect a text encoder from the same CLIP as "
                                         "clip_vision (e.g. SDXL's CLIP or a CLIP-G file with "
                                         "clip_vision_g.safetensors)")
                m, s, _ = region_search.region_search(image[i], feats[i], grid, encode_image, text_emb,
                                                      parsed["op"], crop)
                masks.append(m)
                softs.append(s)
        return torch.stack(masks), torch.stack(softs)


NODE_CLASS_MAPPINGS = {"AttentionEditLearnableRegionMask": LearnableRegionMask}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditLearnableRegionMask": "Learnable Region Mask"}
