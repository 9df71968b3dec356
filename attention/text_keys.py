"""Where each batch row's prompt tokens lie among an attention call's text keys, and which keys are padding.

Branches with prompts of different token counts share one batch by padding every prompt on the right (zeros) to a
common length; the padded keys are masked out of every attention and every attention-derived map (AttnCall.bias,
text_keep, text_columns), so a padded row computes what it would unpadded. A model that pads the text itself (in
ComfyUI 0.3.75 Flux.2 pads on the left to 512 tokens) attends its own padding in a plain run, so that is kept:
the pack lays each prompt out in the model's own padded form (latent_ops/conditioning.py model_text), and word
positions shift by the text the model put first (`shift`).

Family-independent: the hooks build an AttnCall with the text-key slice `txt`; everything here works on that.
"""
import torch

KEEP_KEY = "text_key_keep"


class TextKeys:
    """length: token count of the conditioning given to the sampler (after the pack's padding).
    rows: {(role, cond flag): (shift, end)}: a row's prompt token p is text key shift + p (shift: text the model
    itself puts first, e.g. Flux.2's left padding, attended as in a plain run), and its keys from `end` on only pad
    it to `length` (masked). Rows not named: (0, length). Immutable; lives on the RunState (run.text_keys)."""

    def __init__(self, length, rows=None):
        self.length = int(length)
        self.rows = {key: (int(shift), int(end)) for key, (shift, end) in (rows or {}).items()}

    def __deepcopy__(self, memo):
        return self

    @property
    def padded(self):
        return any(end < self.length for _, end in self.rows.values())

    def offset(self, n_txt):
        """Text keys a model put before the whole conditioning at sampling time (one the pack did not lay out in
        the model's own padded form; such padding is on the left, as Flux.2's)."""
        return max(int(n_txt) - self.length, 0)

    def columns(self, positions, n_txt, role="target", cond=True):
        """Token positions of a row's prompt -> positions among the call's `n_txt` text keys."""
        off = self.offset(n_txt) + self.rows.get((role, bool(cond)), (0, 0))[0]
        return [off + int(p) for p in positions]

    def end(self, role, cond, n_txt):
        """Text keys [0, end) of a row of this role / cond flag are attended; [end, n_txt) are padding."""
        end = self.rows.get((role, bool(cond)), (0, self.length))[1]
        return min(self.offset(n_txt) + end, int(n_txt))

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


def word_columns(run, positions, n_txt, role="target"):
    """Word token positions (in the prompt of a `role` row's conditioning) -> columns among a call's `n_txt` text
    keys: shifted by any text the model put first (Flux.2's left padding), unchanged otherwise."""
    keys = text_keys_of(run)
    return [int(p) for p in positions] if keys is None else keys.columns(positions, n_txt, role)
