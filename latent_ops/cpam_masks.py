"""CPAM masks: the target-mask (M_t) strategies.

Strategies for M_t (the region the edited object should occupy):
  "source": M_t = M_s at every step.
  "given": a user MASK at every step.
  "cross_attention": M_s for the first `after_step` steps, then the target branch's own cross-attention maps of the
  chosen token positions, averaged over the layers and all earlier steps, normalised per image to max 1 and
  thresholded (the paper's mask refinement). Maps come from an AttentionCapture in the edit phase (run.store).
"""

from ..attention.capture import AttentionCapture, captured_maps
from ..attention.text_keys import word_columns
from .masks import as_mask

MODES = ("source", "cross_attention", "given")


class TargetMask:
    """The target mask M_t as a function of the edit step.

    source: M_s [B, H, W]. given: user MASK (mode "given"). tokens: token positions whose maps form the mask
    (mode "cross_attention"); after_step: steps that use M_s first (T_m); threshold: on the max-normalised map.
    """

    def __init__(self, mode, source, given=None, tokens=(), after_step=0, threshold=0.3, key="cpam_target_maps"):
        if mode not in MODES:
            raise ValueError(f"target_mask_mode must be one of {MODES}, got {mode!r}")
        if mode == "given" and given is None:
            raise ValueError("target_mask: target_mask_mode is 'given', so connect a MASK to target_mask "
                             "(or choose 'source' / 'cross_attention')")
        if mode == "cross_attention" and not tokens:
            raise ValueError("mask_tokens: target_mask_mode is 'cross_attention', so name the token positions of "
                             "the edited words (e.g. '2' or '2, 3')")
        self.mode, self.source = mode, as_mask(source, "source_mask")
        self.given = as_mask(given, "target_mask") if given is not None else None
        self.tokens = tuple(sorted(int(t) for t in tokens))
        self.after_step, self.threshold, self.key = int(after_step), float(threshold), key

    def __deepcopy__(self, memo):
        return self

    def controllers(self):
        """Controllers that must run before the CPAM controller (the capture of the target's maps)."""
        if self.mode != "cross_attention":
            return ()
        return (AttentionCapture(self.key, phases=("edit",)),)

    def pixels(self, call):
        """M_t for this call's step, [B, H, W] (B = 1 or images per branch)."""
        if self.mode == "source":
            return self.source
        if self.mode == "given":
            return self.given
        run = call.run
        run.store.setdefault(self.key + "_rows", call.rows("target", True))
        if call.step is None or call.step < self.after_step:
            return self.source
        cached = run.store.get((self.key, "mask", call.step))
        if cached is None:
            cached = self.from_maps(run, call.step, call.index)
            run.store[(self.key, "mask", call.step)] = cached
        return cached

    def from_maps(self, run, step, index=list):
        """M_t from the maps of the steps before `step`; index(positions) selects rows / tokens (AttnCall.index
        inside an attention call: no host data on the device)."""
        maps = captured_maps(run, self.key, steps=set(range(step)))
        rows = run.store.get(self.key + "_rows") or []
        if maps is None or not rows:
            return self.source
        bad = [t for t in self.tokens if t >= maps.shape[1]]
        if bad:
            raise ValueError(f"mask_tokens: positions {bad} exceed the prompt's {maps.shape[1]} tokens")
        columns = word_columns(run, self.tokens)  # shifted by text the model puts first (Flux.2)
        region = maps[index(rows)][:, index(columns)].sum(1)  # [n_target, H, W]
        region = region / region.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]
        return (region >= self.threshold).float()
