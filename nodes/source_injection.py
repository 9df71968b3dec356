"""Source attention injection node: MasaCtrl (mutual self-attention), RF-Solver-Edit (V sharing) and Plug-and-Play
(self-attention map injection)."""
from ..attention.hooks import with_controller
from ..attention.source_injection import GROUPS, SourceInjection as SourceInjectionController, select
from .inputs import ModelPatchNode

MODES = {"key+value (MasaCtrl)": "key+value", "value (RF-Solver-Edit)": "value",
         "query+key (Plug-and-Play)": "query+key"}
AUTO = -1


class SourceInjection(ModelPatchNode):
    DESCRIPTION = (
        "Source attention injection, the classic editing baselines. On the target branch of the Edit Sampler or "
        "FlowEdit, in the chosen layers and steps, the image tokens' attention inputs come from the source branch "
        "(same pass, same image): key+value (MasaCtrl mutual self-attention): the target's image queries attend to "
        "the source's image keys and values; value (RF-Solver-Edit feature sharing): only the values are the "
        "source's, queries and keys stay the target's; query+key (Plug-and-Play): the queries and keys are the "
        "source's, so the target keeps the source's attention map (its layout) on its own values: for recolouring, "
        "with Region Prompt and a drawn mask (docs/region_prompt.md). Text tokens of Flux joint attention keep the "
        "target's Q/K/V. Defaults (-1 and "
        "'paper default') follow each paper scaled to the Edit Sampler's N steps: MasaCtrl acts from step "
        "round(4/50*N) to the end in the self-attention layers from 10/16 of them on (SD1.5: transformer blocks "
        "10-15 = output blocks 6-11; SDXL: 44-69; Flux, our extension: the same share of the double+single "
        "blocks); RF-Solver-Edit acts on steps 0..round(3/25*N)-1 (at least 1) in the Flux single blocks from "
        "20/38 of them on (FLUX.1-dev: 20-37) and, on U-Nets, in every decoder (output block) self-attention layer; "
        "Plug-and-Play acts on the first half of the steps (round(N/2)) in the U-Net decoder self-attention from 1/9 "
        "of it on (SD1.5: output blocks 4-11) and, our extension, in every Flux single block.")
    OUTPUT_TOOLTIPS = ("The MODEL with source injection; connect it to the Edit Sampler or FlowEdit (not to the "
                       "Invert node).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to edit with (U-Net or Flux-family MMDiT)."}),
                "mode": (list(MODES), {"default": "key+value (MasaCtrl)", "tooltip": "key+value: target image "
                         "queries attend to the source's image keys and values (MasaCtrl); value: only the image "
                         "values are replaced by the source's, the target's own attention map is kept "
                         "(RF-Solver-Edit); query+key: the source's attention map on the target's own values, so "
                         "the layout stays and colours may change (Plug-and-Play)."}),
                "start_step": ("INT", {"default": AUTO, "min": AUTO, "max": 10000, "tooltip": "First step index "
                               "that is injected (0-based; Edit Sampler: from the start of the schedule, FlowEdit: "
                               "from its first edited step, N = n_max). -1: the paper's, scaled to the step count N: "
                               "MasaCtrl round(4/50*N); RF-Solver-Edit and Plug-and-Play 0."}),
                "end_step": ("INT", {"default": AUTO, "min": AUTO, "max": 10000, "tooltip": "Injection stops "
                             "before this step (exclusive: start_step <= step < end_step). -1: the paper's: MasaCtrl "
                             "N (to the end); RF-Solver-Edit round(3/25*N), at least 1; Plug-and-Play round(N/2)."}),
                "layers": (list(GROUPS), {"default": GROUPS[0], "tooltip": "Which attention layers: paper default "
                           "(see the node description); all (every U-Net self-attention / Flux double and single "
                           "block); later (U-Net decoder = output blocks / Flux single blocks); earlier (U-Net "
                           "encoder and middle / Flux double blocks). Cross-attention is never touched."}),
                "layer_fraction": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "With a named group: act only on its layers from this share on, in forward "
                                   "order (index >= round(fraction * count)); MasaCtrl's 'layer 10 of 16' is 'all' "
                                   "with 0.625. Ignored by 'paper default', which sets its own."}),
            },
        }

    def patch(self, model, mode, start_step, end_step, layers, layer_fraction):
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got '{mode}'")
        for name, value in (("start_step", start_step), ("end_step", end_step)):
            if value < AUTO:
                raise ValueError(f"{name}: a step index >= 0, or -1 for the paper's default; got {value}")
        chosen = select(model, MODES[mode], layers, layer_fraction)
        controller = SourceInjectionController(MODES[mode], chosen, None if start_step == AUTO else start_step,
                                               None if end_step == AUTO else end_step)
        return (with_controller(model, controller),)


NODE_CLASS_MAPPINGS = {"AttentionEditSourceInjection": SourceInjection}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionEditSourceInjection": "Source Attention Injection (MasaCtrl / RF-Solver-Edit)"}
