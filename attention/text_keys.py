"""Where each batch row's prompt tokens lie among an attention call's text keys, and which keys are padding.

Branches with prompts of different token counts share one batch by padding every prompt on the right (zeros) to a
common length; the padded keys are masked out of every attention and every attention-derived map (AttnCall.bias,
text_keep, text_columns), so a padded row computes what it would unpadded. A model that pads the text itself (in
ComfyUI 0.3.75 Flux.2 pads on the left to 512 tokens) has more text keys than the conditioning had tokens: those
extra keys come first (`offset`) and belong to the model's own plain run, so they are kept, and word positions
shift by them.

Family-independent: the hooks build an AttnCall with the text-key slice `txt`; everything here works on that.
"""
import torch

KEEP_KEY = "text_key_keep"


class TextKeys:
    """length: token count of the conditioning given to the sampler (after the pack's padding).
    valid: {(role, cond flag): real token count} of rows padded on the right; rows not named are not padded.
    Immutable; lives on the RunState (run.text_keys)."""

    def __init__(self, length, valid=None):
        self.length = int(length)
        self.valid = {key: int(n) for key, n in (valid or {}).items() if int(n) < int(length)}

    def __deepcopy__(self, memo):
        return self

    @property
    def padded(self):
        return bool(self.valid)

    def offset(self, n_txt):
        """Text keys the model put before the conditioning's tokens (its own left padding)."""
        return max(int(n_txt) - self.length, 0)

    def columns(self, positions, n_txt):
        """Token positions in the conditioning -> positions among the call's `n_txt` text keys."""
        off = self.offset(n_txt)
        return [off + int(p) for p in positions]

    def end(self, role, cond, n_txt):
        """Text keys [0, end) of a row of this role / cond flag are attended; [end, n_txt) are padding."""
        valid = self.valid.get((role, bool(cond)))
        return int(n_txt) if valid is None else min(self.offset(n_txt) + valid, int(n_txt))

    def keep(self, roles, conds, txt, n_keys, device, store=None):
        """Bool [B, n_keys]: False at the padded text keys of each row; None when no row of this call is padded.
        Built on the device without host data (one fill per row), cached in `store` (a run's store) per layout."""
        n_txt = txt.stop - txt.start
        ends = [self.end(r, c, n_txt) for r, c in zip(roles, conds)]
        if all(e >= n_txt for e in ends):
            return None
        key = (tuple(ends), txt.start, txt.stop, int(n_keys), torch.device(device))
        cache = store.setdefault(KEEP_KEY, {}) if store is not None else {}
        keep = cache.get(key)
        if keep is None:
            pos = torch.arange(n_keys, device=device)
            stops = torch.cat([torch.full((1,), txt.start + e, device=device) for e in ends])
            keep = cache[key] = (pos[None] < stops[:, None]) | (pos[None] < txt.start) | (pos[None] >= txt.stop)
        return keep


def text_keys_of(run):
    """The run's TextKeys, or None (no run, or a conditioning the pack did not lay out)."""
    return getattr(run, "text_keys", None) if run is not None else None


def word_columns(run, positions, n_txt):
    """Word token positions (in the conditioning) -> columns among a call's `n_txt` text keys: shifted by any text
    the model put first (Flux.2's left padding), unchanged otherwise."""
    keys = text_keys_of(run)
    return [int(p) for p in positions] if keys is None else keys.columns(positions, n_txt)
