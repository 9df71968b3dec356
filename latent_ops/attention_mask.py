"""Edit mask from attention (ProEdit): where the image attends to the edit word of the source prompt.

word -> token positions (the MODEL's conditioning tokens, found with the CLIP object's tokenizer); one model
evaluation at the clean source latent (sigma 0, the first inversion step) with the source prompt; the
head-averaged attention of image queries to the word's tokens: MMDiT (Flux) in the last double block (joint
softmax over all keys), U-Net the cross-attention maps of every layer averaged at the finest grid; threshold at
the mean per image; dilate by one token (3x3); resize to the requested size.
"""
import re

import torch
import torch.nn.functional as F

from ..attention.controller import RUN_KEY, Controller
from ..attention.hooks import model_family, self_attention_layers, with_controller
from ..attention.masked import as_4d
from ..attention.run_state import RunState
from .conditioning import text_layout
from .guided_loop import run_guided
from .masks import dilate as grow, resize

MAPS_KEY = "edit_word_maps"


# ----- word -> token positions ---------------------------------------------------------------------------------

def prompt_words(prompt):
    """The prompt's words, lower-case, punctuation stripped."""
    return [w for w in (re.sub(r"[^\w'-]", "", p).lower() for p in prompt.split()) if w]


def _flat_tokens(tokenized, key):
    """[(token, word id)] over all chunks of one tokenizer's output (position = index in this list)."""
    return [(t[0], t[2] if len(t) > 2 else 1) for chunk in tokenized[key] for t in chunk]


def tokenizer_key(tokenized, family):
    """Which tokenizer's tokens make up the MODEL's text sequence: T5 for Flux, CLIP-L (or the only one) else (SD3:
    the CLIP-L/G tokens come first in its text sequence, at their tokenized positions, then T5's)."""
    keys = list(tokenized)
    for key in (("t5xxl", "l") if family in ("dit", "flux") else ("l", "g")):
        if key in tokenized:
            return key
    if len(keys) == 1:
        return keys[0]
    raise ValueError(f"clip: cannot tell which of the tokenizers {keys} drives this model's text tokens")


def _same(a, b):
    return a == b if not (torch.is_tensor(a) or torch.is_tensor(b)) else False


def _find(seq, sub):
    return [i for i in range(len(seq) - len(sub) + 1) if all(_same(seq[i + j], sub[j]) for j in range(len(sub)))]


def _by_difference(clip, prompt, word, key):
    """Token positions of each occurrence of `word`, found by tokenizing the prompt with that occurrence replaced:
    the tokens that differ are the word's. For tokenizers whose word ids do not separate the prompt's words (the
    LLM encoders' chat templates: Qwen-Image, Z-Image), where the word alone tokenizes unlike in context."""
    def tokens(text):
        return [t for t, _ in _flat_tokens(clip.tokenize(text, return_word_ids=True), key)]
    base, found = tokens(prompt), []
    for m in re.finditer(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", prompt, flags=re.IGNORECASE):
        other = tokens(prompt[:m.start()] + "|" + prompt[m.end():])
        start = next((i for i, (a, b) in enumerate(zip(base, other)) if not _same(a, b)), None)
        if start is None:
            continue
        tail = next(i for i, (a, b) in enumerate(zip(base[::-1], other[::-1])) if not _same(a, b))
        found += range(start, len(base) - tail)
    return found


def word_token_positions(clip, prompt, word, family="unet", cond_length=None, names=("word", "source prompt")):
    """Positions of `word` (one or more words) in the tokenized `prompt`, as a sorted list; clear errors.
    cond_length: the encoded prompt's token count; an encoder that drops a template prefix (Qwen-Image) makes it
    shorter than the tokenized prompt, and positions found by difference are shifted by what it dropped.
    names: (the word input's name, the prompt's name) for the error messages."""
    name, where = names
    words = prompt_words(prompt)
    wanted = prompt_words(word)
    if not wanted:
        raise ValueError(f"{name}: empty; name the edited object, one of the prompt's words: {words}")
    missing = [w for w in wanted if w not in words]
    if missing:
        raise ValueError(f"{name}: {missing} not in the {where}; its words are {words}")
    tokenized = clip.tokenize(prompt, return_word_ids=True)
    key = tokenizer_key(tokenized, family)
    flat = _flat_tokens(tokenized, key)
    ids = [t if wid != 0 else None for t, wid in flat]  # special tokens never match
    spellings = {w.lower(): w for w in re.findall(r"[\w'-]+", prompt)}
    positions = set()
    for w in wanted:
        found = []
        for spelling in dict.fromkeys([spellings.get(w, w), w]):
            sub = [t for t, wid in _flat_tokens(clip.tokenize(spelling, return_word_ids=True), key) if wid != 0]
            for start in _find(ids, sub) if sub else []:
                found += range(start, start + len(sub))
            if found:
                break
        if not found:
            found = _by_difference(clip, prompt, w, key)
            if found and cond_length is not None and len(flat) > cond_length:
                found = [p - (len(flat) - cond_length) for p in found]
        if not found or min(found) < 0:
            raise ValueError(f"{name}: the tokens of '{w}' were not found in the tokenized {where} "
                             f"(tokenizer '{key}'); try another of its words: {words}")
        positions.update(found)
    return sorted(positions)


# ----- attention maps -------------------------------------------------------------------------------------------

def word_attention(q_img, k, cols, scale, bias=None):
    """Head-averaged attention mass of image queries on the key columns `cols`: q_img [B, H, n, D], k [B, H, L, D]
    -> [B, n]. The softmax runs over all L keys (computed one head at a time to bound memory). cols: positions, or
    a selector (slice / device index tensor)."""
    if isinstance(cols, (list, tuple)):
        cols = torch.as_tensor(cols, device=k.device)
    total = torch.zeros(q_img.shape[0], q_img.shape[2], device=q_img.device)
    for h in range(q_img.shape[1]):
        logits = (q_img[:, h].float() @ k[:, h].float().transpose(-1, -2)) * scale
        if bias is not None:
            b = bias[:, h if bias.shape[1] > 1 else 0] if bias.ndim == 4 else bias
            logits = logits + b.float()
        total += logits.softmax(-1)[..., cols].sum(-1)
    return total / q_img.shape[1]


def mask_from_map(word_map, dilate=1):
    """[B, h, w] attention map -> binary mask: above the per-image mean, dilated by `dilate` tokens."""
    mean = word_map.flatten(1).mean(-1).view(-1, 1, 1)
    mask = (word_map > mean).float()
    return grow(mask, dilate)


class WordAttention(Controller):
    """Records the image->word attention of the source's conditional rows: joint attention in `layers` (MMDiT) or
    every cross-attention layer (U-Net), summed at the finest grid seen, in run.store[MAPS_KEY] = [sum, count]."""
    kinds = ("cross", "joint")

    def __init__(self, positions, layers=None):
        self.positions = tuple(positions)
        self.layers = None if layers is None else frozenset(layers)

    def wants(self, call):
        return (call.kind in self.kinds and call.run is not None and call.run.phase == "capture"
                and (self.layers is None or call.layer in self.layers))

    def after(self, call, out):
        rows = call.index(call.rows(None, True))
        positions = call.text_columns(self.positions, "source")  # shifted by text the model puts first (Flux.2)
        if call.txt.stop - call.txt.start <= max(positions):
            raise ValueError(f"word: token position {max(positions)} lies beyond the model's "
                             f"{call.txt.stop - call.txt.start} text tokens; the CLIP does not match this conditioning")
        q = call.q[rows][:, :, call.img]
        if call.kind == "joint":
            bias = call.bias()
            if bias is not None:
                bias = as_4d(bias)
                bias = bias[rows] if bias.shape[0] == call.q.shape[0] else bias
                bias = bias[..., call.img, :] if bias.shape[2] == call.q.shape[2] else bias
            m = word_attention(q, call.k[rows], call.index([call.txt.start + p for p in positions]), call.scale,
                               bias)
        else:
            m = word_attention(q, call.k[rows][:, :, call.txt], call.index(positions), call.scale,
                               call.text_bias(rows))
        m = call.image_map(m)
        entry = call.run.store.get(MAPS_KEY)
        if entry is not None and tuple(entry[0].shape[-2:]) != tuple(m.shape[-2:]):  # U-Net: finest grid wins
            if entry[0].shape[-1] > m.shape[-1]:
                m = F.interpolate(m[:, None], size=tuple(entry[0].shape[-2:]), mode="bilinear",
                                  align_corners=False)[:, 0]
            else:
                entry[0] = F.interpolate(entry[0][:, None], size=tuple(m.shape[-2:]), mode="bilinear",
                                         align_corners=False)[:, 0]
        if entry is None:
            call.run.store[MAPS_KEY] = [m.clone(), 1]
        else:
            entry[0] += m
            entry[1] += 1
        return out


DIT_LAYERS = ("all double blocks", "last double block")


def double_blocks(model, which):
    """Joint-attention layer names of the MMDiT blocks whose maps are averaged: the dual-stream ("double") blocks of
    Flux, SD3/SD3.5 and Qwen-Image; on Lumina 2 / Z-Image (single-stream joint layers only) those layers."""
    if which not in DIT_LAYERS:
        raise ValueError(f"layers must be one of {DIT_LAYERS}, got {which!r}")
    names = self_attention_layers(model)
    names = [n for n in names if n.startswith("double.")] or list(names)
    return names[-1:] if which == "last double block" else names


def last_double_block(model):
    return double_blocks(model, DIT_LAYERS[1])[0]


def word_attention_map(model, latent, positive, positions, seed=0, dit_layers="all double blocks"):
    """Attention map [B, h, w] of the clean source latent (user space) to the word's tokens, one model call.
    MMDiT: averaged over `dit_layers`; U-Net: every cross-attention layer."""
    family = model_family(model)
    layers = double_blocks(model, dit_layers) if family == "dit" else None
    patched = with_controller(model, WordAttention(positions, layers))
    run = RunState(branches=("source",), per_branch=latent.shape[0], phase="capture", total_steps=1,
                   latent_hw=tuple(latent.shape[-2:]))
    run.step = 0
    if len(positive) == 1:  # word positions shift by the text the model puts first (Flux.2's left padding)
        positive, run.text_keys = text_layout(model, positive, "source")
    patched.model_options["transformer_options"][RUN_KEY] = run

    def loop(model_fn, x, sig):
        model_fn(x, float(sig[0]))
        return x

    run_guided(patched, positive, None, 1.0, latent, torch.zeros(1), loop, seed)
    entry = run.store.get(MAPS_KEY)
    if entry is None:
        raise ValueError("model: no attention to the prompt was seen; is this a text-conditioned model?")
    return entry[0] / entry[1]


def overlay(mask, image=None, color=(1.0, 0.0, 0.0), alpha=0.5):
    """IMAGE [B, H, W, 3] showing the mask: tinted over `image` when given, else the mask in grey."""
    if image is None:
        return mask[..., None].expand(*mask.shape, 3).clone()
    m = resize(mask, image.shape[1:3])
    if m.shape[0] != image.shape[0]:
        m = m[:1].expand(image.shape[0], *m.shape[1:]) if m.shape[0] == 1 else m
        image = image[:1].expand(m.shape[0], *image.shape[1:]) if image.shape[0] == 1 else image
    tint = torch.tensor(color, dtype=image.dtype, device=image.device)
    a = (alpha * m)[..., None].to(image)
    return image[..., :3] * (1 - a) + tint * a
