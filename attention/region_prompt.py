"""Region prompt: the target's named words are drawn inside a mask (attention modulation, as in Dense Diffusion,
Kim et al. 2023, for layouts).

In the pack's edit samplers (Edit Sampler, Edit Guider, FlowEdit), on the target branch's conditional rows and for
the first `end_percent` of the steps, each image query's attention logits get an additive bias, m = the mask on the
layer's token grid (soft edges from area resizing), signed s = 2m - 1 (+1 inside, -1 outside):
  text keys of the words: + strength * s   (cross-attention, U-Net; the text keys of joint attention, MMDiT)
  image keys:             + self_strength * (m_q m_k + (1 - m_q)(1 - m_k))   (self- / joint attention: a query
                          reads more of its own region, so what is drawn inside the mask is one coherent thing)
Strengths are in logit units; they decay linearly to 0 over the active steps. The bias joins the call's own
(AttnCall.add_bias), so attention is computed once, with it, by whichever kernel the call reaches (the pack's, or
another node's attention override as its mask). Other rows, text queries and the unconditional pass get 0;
reference tokens after the image tokens (Kontext, FLUX.2) get none.
"""
import torch

from .controller import Controller
from .token_masks import pick


class RegionPrompt(Controller):
    """mask: float [B, H, W] (pixel or latent size); positions: the words' token positions in the target prompt."""
    technique = "Region Prompt"
    kinds = ("self", "cross", "joint")

    def __init__(self, mask, positions, strength=10.0, self_strength=8.0, end_percent=1.0):
        if not positions:
            raise ValueError("words: no token positions; name words of the target prompt")
        self.mask, self.positions = mask, tuple(int(p) for p in positions)
        self.strength, self.self_strength, self.end_percent = float(strength), float(self_strength), float(end_percent)

    def check_shape(self, latent_hw):
        """A clear error when the mask's aspect ratio is not the latent's (it would be stretched onto the image)."""
        (mh, mw), (lh, lw) = self.mask.shape[-2:], latent_hw
        if lh and lw and mh * lw != mw * lh:
            raise ValueError(f"Region Prompt: the mask is {mh}x{mw} but the latent is {lh}x{lw} (an image of "
                             f"another shape); give a mask of the edited image's size")

    def weight(self, call):
        """1 at the first step, falling linearly to 0 at end_percent of the run's steps (0 after)."""
        total = max(int(getattr(call.run, "total_steps", 0) or 0), 1)
        active = self.end_percent * total
        step = call.step or 0
        return max(0.0, 1.0 - step / active) if active > 0 else 0.0

    def biases_words(self, call):
        return call.kind in ("cross", "joint") and self.strength != 0.0

    def biases_region(self, call):
        return call.kind in ("self", "joint") and self.self_strength != 0.0

    def wants(self, call):
        if call.run is None or call.run.phase != "edit" or not (self.biases_words(call) or self.biases_region(call)):
            return False
        return bool(call.rows("target", True)) and self.weight(call) > 0.0

    def bias(self, call):
        """Additive bias [B, 1, Lq, Lk]: the target's conditional rows' image queries get the words' and the own
        region's terms, every other entry is 0."""
        self.check_shape(call.latent_hw)
        per = max(getattr(call.run, "per_branch", 1), 1)
        tokens = call.tokens(self.mask)
        w = self.weight(call)
        img = call.img
        bias = torch.zeros(call.q.shape[0], 1, call.q.shape[2], call.k.shape[2], dtype=call.q.dtype,
                           device=call.q.device)
        cols = None
        if self.biases_words(call):
            cols = call.index([call.txt.start + c for c in call.text_columns(self.positions, "target")])
        for j, r in enumerate(call.rows("target", True)):
            m = pick(tokens, j % per)
            row = bias[r, 0, img]  # a view: the image queries of row r
            if cols is not None:
                row[:, cols] += (w * self.strength) * (2 * m - 1)[:, None]
            if self.biases_region(call):
                same = m[:, None] * m[None, :] + (1 - m)[:, None] * (1 - m)[None, :]
                row[:, img] += (w * self.self_strength) * same
        return bias

    def before(self, call):
        call.add_bias(self.bias(call))
