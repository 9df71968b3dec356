"""Per-image region search (no trained weights), in the spirit of CVPR'24 "Text-Driven Image Editing via Learnable
Regions": anchor points from patch-feature saliency, square candidate boxes of several sizes around each anchor,
every candidate scored with an image-text model; the best box is the edit region.

Scoring (the CVPR'24 weights: text similarity x2 + image similarity x1). The paper inpaints every box with a
generator and scores the edited image; here no generator runs, so the stand-in is (docs/region_mask.md):
  text term  = sign * cos(E_img(crop of the box, resized), E_txt(locating phrase))
               change/remove: the phrase names the object to edit ("a red circle"), sign +1;
               add: the phrase is a generic object description, sign -1 (the box should hold no object).
  image term = sign * (1 - cos(E_img(image with the box filled by the background colour), E_img(image)))
               i.e. how much the box's content matters to the image: wanted for change/remove, unwanted for add.
The background colour is estimated from the image itself (median pixel); nothing uses ground truth.
`search` is generic: any scorer(boxes) -> scores works (tests plant one).
"""
import re

import torch
import torch.nn.functional as F

SCALES = (0.2, 0.3, 0.42, 0.56)  # box sides as fractions of the shorter image side
TEXT_WEIGHT, IMAGE_WEIGHT = 2.0, 1.0

_COLOR = r"(?:red|orange|yellow|green|blue|purple|white|black)"


def parse_instruction(text):
    """Template parser: {'op': change|remove|add|background, 'source': phrase, 'target': phrase}.

    'make the red circle blue' -> change, 'red circle' -> 'blue circle'; 'remove the square' -> remove, 'square';
    'add a yellow triangle' -> add, target 'yellow triangle'; 'change the background to green' -> background.
    Unknown wording falls back to change with the whole instruction as the source phrase."""
    t = " ".join(str(text).lower().strip().rstrip(".!").split())
    if not t:
        raise ValueError("instruction: empty; write e.g. 'make the red circle blue' or 'remove the square'")
    m = re.match(r"(?:change|make|turn|paint) the background (?:to |into |)(?:a |an |)(.+?)(?: background)?$", t)
    if m:
        return {"op": "background", "source": "background", "target": m.group(1)}
    m = re.match(r"(?:remove|delete|erase) (?:the |a |an |)(.+)$", t)
    if m:
        return {"op": "remove", "source": m.group(1), "target": ""}
    m = re.match(r"(?:add|insert|put|draw) (?:a |an |the |)(.+?)(?: to the image| somewhere)?$", t)
    if m:
        return {"op": "add", "source": "", "target": m.group(1)}
    m = re.match(rf"(?:make|paint|colou?r) the (.+?) ({_COLOR})$", t)
    if m:
        obj = m.group(1)
        words = obj.split()
        shape = words[-1]
        return {"op": "change", "source": obj, "target": f"{m.group(2)} {shape}"}
    m = re.match(r"(?:change|turn|transform|replace) the (.+?) (?:into|to|with) (?:a |an |the |)(.+)$", t)
    if m:
        src, tgt = m.group(1), m.group(2)
        colour = re.match(rf"({_COLOR}) ", src + " ")
        if colour and not re.match(_COLOR, tgt):
            tgt = f"{colour.group(1)} {tgt}"
        elif re.fullmatch(_COLOR, tgt):  # 'change the red circle to blue'
            tgt = f"{tgt} {src.split()[-1]}"
        return {"op": "change", "source": src, "target": tgt}
    return {"op": "change", "source": t, "target": t}


def saliency(patch_feats):
    """[N, D] -> [N] in [0, 2]: cosine distance of each patch from the median patch (background-like)."""
    proto = patch_feats.median(dim=0).values
    return 1 - F.cosine_similarity(patch_feats, proto[None], dim=-1)


def anchors(patch_feats, grid, k=6, lowest=False, min_dist=2):
    """Up to k anchor points (cy, cx) as fractions of the image: the most (or least) salient patches, spread out
    by non-maximum suppression (min_dist patches apart); the coarse 3x3 grid fills up when too few remain."""
    gh, gw = grid
    s = saliency(patch_feats.float())
    order = torch.argsort(s, descending=not lowest).tolist()
    picked = []
    for i in order:
        y, x = divmod(i, gw)
        if all(max(abs(y - py), abs(x - px)) >= min_dist for py, px in picked):
            picked.append((y, x))
        if len(picked) == k:
            break
    pts = [((y + 0.5) / gh, (x + 0.5) / gw) for y, x in picked]
    for fy in (1 / 6, 1 / 2, 5 / 6):
        for fx in (1 / 6, 1 / 2, 5 / 6):
            if len(pts) < k:
                pts.append((fy, fx))
    return pts


def candidate_boxes(points, size, scales=SCALES, weight=None, shifts=2):
    """Square boxes [K, 4] (x0, y0, x1, y1; pixels, exclusive) of each scale around each point, inside the image.

    With a pixel weight map [H, W] (saliency), each box is re-centred `shifts` times on the weighted centroid of
    what it covers (mean shift), so boxes sit on the salient blob rather than on the anchor patch's centre."""
    H, W = size
    side0 = min(H, W)
    boxes = []
    for cy, cx in points:
        for sc in scales:
            s = max(2, int(round(sc * side0)))
            py, px = cy * H, cx * W
            for it in range(shifts + 1):
                x0 = min(max(int(round(px - s / 2)), 0), W - s)
                y0 = min(max(int(round(py - s / 2)), 0), H - s)
                if weight is None or it == shifts:
                    break
                w = weight[y0:y0 + s, x0:x0 + s]
                if float(w.sum()) <= 0:
                    break
                ys = torch.arange(y0, y0 + s, dtype=w.dtype) + 0.5
                xs = torch.arange(x0, x0 + s, dtype=w.dtype) + 0.5
                py = float((w.sum(1) * ys).sum() / w.sum())
                px = float((w.sum(0) * xs).sum() / w.sum())
            boxes.append((x0, y0, x0 + s, y0 + s))
    return torch.tensor(sorted(set(boxes)), dtype=torch.long)


def saliency_map(patch_feats, grid, size):
    """Pixel weight map [H, W]: patch saliency above its median, nearest-upsampled (zero on background-like)."""
    s = saliency(patch_feats.float())
    s = (s - s.median()).clamp_min(0).reshape(1, 1, *grid)
    return F.interpolate(s, size=tuple(size), mode="nearest")[0, 0]


def box_mask(box, size):
    """MASK [H, W] that is 1 inside the box."""
    m = torch.zeros(size)
    x0, y0, x1, y1 = (int(v) for v in box)
    m[y0:y1, x0:x1] = 1.0
    return m


def search(boxes, scorer):
    """(best box [4], scores [K]) for a scorer(boxes [K,4]) -> [K]; ties go to the first candidate."""
    scores = scorer(boxes).float()
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scorer returned shape {tuple(scores.shape)} for {boxes.shape[0]} boxes")
    return boxes[int(torch.argmax(scores))], scores


def background_colour(image):
    """The image's median pixel [3]: the background colour estimate (image [H, W, 3])."""
    return image.reshape(-1, image.shape[-1]).median(dim=0).values


def crops_and_fills(image, boxes, crop_size):
    """(crops [K, c, c, 3], images with each box filled by the background colour [K, c, c, 3]); bilinear resizing."""
    bg = background_colour(image)
    crops, fills = [], []
    for x0, y0, x1, y1 in boxes.tolist():
        crops.append(_resize(image[y0:y1, x0:x1], crop_size))
        f = image.clone()
        f[y0:y1, x0:x1] = bg
        fills.append(_resize(f, crop_size))
    return torch.stack(crops).clamp(0, 1), torch.stack(fills)


def _resize(image, size):
    """[H, W, 3] -> [h, w, 3] bilinear."""
    x = F.interpolate(image.permute(2, 0, 1)[None], size=tuple(size), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def clip_scorer(image, encode_image, text_emb, op, crop_size, batch=32):
    """The paper-weighted scorer described in the module docstring. encode_image([K,h,w,3]) -> [K, E]."""
    sign = -1.0 if op == "add" else 1.0
    text_emb = F.normalize(text_emb.float().reshape(1, -1), dim=-1)

    def enc(x):
        return torch.cat([F.normalize(encode_image(x[i:i + batch]).float(), dim=-1) for i in range(0, len(x), batch)])

    def scorer(boxes):
        crops, fills = crops_and_fills(image, boxes, crop_size)
        e_src = enc(_resize(image, crop_size)[None])
        t = (enc(crops) @ text_emb.t())[:, 0]
        change = 1 - (enc(fills) @ e_src.t())[:, 0]
        return sign * (TEXT_WEIGHT * t + IMAGE_WEIGHT * change)
    return scorer


def region_search(image, patch_feats, grid, encode_image, text_emb, op, crop_size, k=6, scales=SCALES):
    """The per-image mode for one image [H, W, 3]: (binary MASK [H, W], soft MASK [H, W], best box).

    The soft mask is the candidates' score-weighted box coverage (softmax over scores, temperature 0.05)."""
    size = tuple(image.shape[:2])
    pts = anchors(patch_feats, grid, k=k, lowest=(op == "add"))
    weight = None if op == "add" else saliency_map(patch_feats, grid, size)
    boxes = candidate_boxes(pts, size, scales, weight)
    best, scores = search(boxes, clip_scorer(image, encode_image, text_emb, op, crop_size))
    w = torch.softmax((scores - scores.max()) / 0.05, dim=0)
    soft = sum(wi * box_mask(b, size) for wi, b in zip(w.tolist(), boxes))
    soft = soft / soft.max().clamp_min(1e-8)
    return box_mask(best, size), soft, best


def background_region(patch_feats, grid, size, threshold=0.5):
    """op 'background': the complement of the salient patches (objects), at pixel size: (MASK, soft MASK)."""
    s = saliency(patch_feats.float())
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-8)
    soft = F.interpolate((1 - s).reshape(1, 1, *grid), size=size, mode="bilinear", align_corners=False)[0, 0]
    return (soft > threshold).float(), soft.clamp(0, 1)
