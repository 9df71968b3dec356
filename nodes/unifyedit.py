"""SAPreserveOptimizer node (UnifyEdit): optimises the edit sampler's target latent with a self-attention
preservation loss and a cross-attention alignment loss, balanced by an adaptive timestep scheduler."""
import torch

from ..attention.attention_record import SCALES, AttentionRecord
from ..attention.dit_families import family_key, refuse
from ..attention.hooks import model_family, with_controller
from ..latent_ops.latent_hooks import with_latent_hook
from ..latent_ops.unifyedit import MODES, UnifyEditConfig, UnifyEditHook, grad_ready
from .inputs import ModelPatchNode


def _ids(clip, text):
    tokens = clip.tokenize(text)
    key = next(iter(tokens))
    return [int(t[0]) if not torch.is_tensor(t[0]) else -1 for chunk in tokens[key] for t in chunk]


def token_positions(clip, prompt, words):
    """Text-token positions of each edit word (possibly several tokens) in `prompt` as `clip` tokenizes it."""
    ids = _ids(clip, prompt)
    special = set(_ids(clip, ""))
    positions = []
    for word in words:
        piece = [i for i in _ids(clip, word) if i not in special]
        found = [s for s in range(len(ids) - len(piece) + 1) if piece and ids[s:s + len(piece)] == piece]
        if not found:
            raise ValueError(f"edit_tokens: '{word}' is not in the target prompt '{prompt}'; list words that "
                             f"appear in the target prompt (the edit, e.g. 'white' in 'a white bird')")
        positions += list(range(found[0], found[0] + len(piece)))
    return sorted(set(positions))


def parse_edit_tokens(text, clip=None, prompt=""):
    """Words (needs clip + target_prompt) or explicit token indices ('#2, #3') -> sorted positions."""
    items = [w.strip() for w in str(text).replace(",", " ").split() if w.strip()]
    if not items:
        raise ValueError("edit_tokens: name at least one word of the target prompt (e.g. 'white')")
    if all(w.startswith("#") for w in items):
        try:
            return sorted({int(w[1:]) for w in items})
        except ValueError:
            raise ValueError("edit_tokens: token indices are written '#3, #4'") from None
    if clip is None or not str(prompt).strip():
        raise ValueError("edit_tokens: to find words, connect the CLIP and type the target prompt in target_prompt "
                         "(or give token indices such as '#3')")
    return token_positions(clip, prompt, items)


class SAPreserveOptimizer(ModelPatchNode):
    DESCRIPTION = ("UnifyEdit: before each of the first steps of the Edit Sampler, moves the target branch's latent "
                   "along gradients (through the model) of a self-attention preservation loss (target self-attention "
                   "= source self-attention: structure fidelity) and a cross-attention alignment loss (the edit "
                   "words attend inside the edit region: editability). The balanced mode weighs them with an "
                   "adaptive timestep scheduler: preservation rises over the steps, alignment falls. "
                   "Connect the output MODEL to the Edit Sampler (source + target branches).")
    OUTPUT_TOOLTIPS = ("The model with the optimiser attached (a patched clone; the input MODEL is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        scales = list(SCALES)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model you invert and edit with: SD1.x / SD2.x / SDXL U-Net "
                                               "(Flux is refused with a clear error, see docs)."}),
                "edit_tokens": ("STRING", {"default": "", "tooltip": "Words of the target prompt that carry the "
                                "edit (e.g. 'white'), comma separated; needs clip + target_prompt. Or token indices "
                                "'#3, #4' of the conditioning."}),
                "gradient_mode": (list(MODES), {"default": "balanced", "tooltip": "balanced: normalised gradients "
                                  "weighted by the adaptive scheduler (the paper's method); normalized: each gradient "
                                  "scaled to unit norm times beta; naive: beta-weighted raw gradients (ablation)."}),
                "beta1": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": "Magnitude "
                          "of the self-attention preservation term (its final weight in balanced mode)."}),
                "beta2": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": "Magnitude "
                          "of the cross-attention alignment term (its first weight in balanced mode)."}),
                "k1": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": "How fast the "
                       "preservation weight rises: beta1*(1-exp(-k1 p))/(1-exp(-k1)); 0 = linear."}),
                "k2": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": "How fast the "
                       "alignment weight falls: beta2*exp(-k2 p); 0 = constant."}),
                "iterations": ("INT", {"default": 5, "min": 0, "max": 50, "tooltip": "Gradient steps per denoising "
                               "step (each costs one forward + backward pass); 0 = plain editing."}),
                "step_size": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "s in "
                              "z <- z - s * sigma_t * g."}),
                "active_steps": ("INT", {"default": 10, "min": 0, "max": 1000, "tooltip": "Optimise before the "
                                 "first N sampling steps (about half the schedule; p runs from 0 to 1 over them)."}),
                "sa_layers": (scales, {"default": "1/4", "tooltip": "Self-attention layers for the preservation "
                              "loss, by token-grid scale of the latent (1/4 = the 16x16 layers of SD1.5 at 512 px). "
                              "Lower resolutions use far less memory (an LxL map per layer)."}),
                "ca_layers": (scales, {"default": "1/4", "tooltip": "Cross-attention layers for the alignment "
                              "loss, by token-grid scale."}),
                "attention_precision": (["float32", "float16", "bfloat16"], {"default": "float32", "tooltip":
                                        "Precision of the recorded attention maps (float16 halves their memory)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Edit region (white = edit). Without it, the mask comes from the edit "
                                 "words' cross-attention at every step."}),
                "clip": ("CLIP", {"tooltip": "The text encoder of the target prompt, to find the edit words' tokens."}),
                "target_prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "The target prompt text, "
                                  "exactly as encoded for the Edit Sampler's target_positive."}),
                "sap_region": (["full", "mask"], {"default": "full", "tooltip": "full: preserve the whole "
                               "self-attention map; mask: only pairs of positions inside the mask (M M^T)."}),
                "layer_names": ("STRING", {"default": "", "tooltip": "Optional comma-separated layer names that "
                                "must also match (e.g. 'output.3.0, middle.0.0')."}),
            },
        }

    def patch(self, model, edit_tokens, gradient_mode, beta1, beta2, k1, k2, iterations, step_size, active_steps,
              sa_layers, ca_layers, attention_precision, mask=None, clip=None, target_prompt="", sap_region="full",
              layer_names=""):
        if model_family(model) == "dit":
            flux = family_key(model) == "flux"
            raise refuse(model, "SA-Preserve Optimizer (UnifyEdit)", (
                "it needs gradients through the model, and ComfyUI's Flux blocks update their activations in place "
                "(img += ...), which autograd cannot differentiate" if flux else
                "its losses are defined on U-Net self- and cross-attention maps, and the pack has no gradient path "
                "through this family's joint attention") + "; use an SD1.x / SD2.x / SDXL U-Net model (on MMDiT "
                "models use the KV-Mix / CPAM / Source Injection nodes)")
        tokens = parse_edit_tokens(edit_tokens, clip, target_prompt)
        if mask is not None:
            mask = mask.reshape(-1, *mask.shape[-2:]).float().clone()
            if float(mask.max()) <= 0:
                raise ValueError("mask: it is empty; paint the edit region white, or leave mask unconnected")
        layers = {n.strip() for n in layer_names.split(",") if n.strip()} or None
        config = UnifyEditConfig(mode=gradient_mode, beta1=beta1, beta2=beta2, k1=k1, k2=k2, iterations=iterations,
                                 step_size=step_size, active_steps=active_steps, sap_region=sap_region)
        if iterations == 0 or active_steps == 0:
            return (model.clone(),)
        record = AttentionRecord(tokens, SCALES[sa_layers], SCALES[ca_layers], layers,
                                 getattr(torch, attention_precision))
        patched = with_latent_hook(with_controller(grad_ready(model), record), UnifyEditHook(config, mask))
        return (patched,)


NODE_CLASS_MAPPINGS = {"AttentionEditSAPreserveOptimizer": SAPreserveOptimizer}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditSAPreserveOptimizer": "SA-Preserve Optimizer (UnifyEdit)"}
