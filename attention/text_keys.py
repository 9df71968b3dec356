"""Where each batch row's prompt tokens lie among an attention call's text keys, and which keys are padding.

Branches with prompts of different token counts share one batch by padding every prompt on the right (zeros) to a
common length; the padded keys are masked out of every attention and every attention-derived map (AttnCall.bias,
text_keep, text_columns), so a padded row computes what it would unpadded. A model that pads the text itself (in
ComfyUI 0.3.75 Flux.2 pads on the left to 512 tokens) attends its own padding in a plain run, so that is kept:
the pack lays each prompt out in the model's own padded form (latent_ops/conditioning.py model_text), and word
positions shift by the text the model put first (`shift`). Tokens a model adds inside its forward (SD3's registers
before the text, Z-Image's padding after it) are the model's own, kept: the family's hook gives AttnCall the key
where the conditioning's tokens start (prompt_start), the keys past them are not touched.

Family-independent: the hooks build an AttnCall with the text-key slice `txt`; everything here works on that.
"""
import torch

KEEP_KEY = "text_key_keep"


class TextKeys:
    """length: token count of the conditioning given to the sampler (after the pack's padding).
    rows: {(role, cond flag): (shift, end)}: a row's prompt token p is conditioning token shift + p (shift: text the
    model itself puts first, e.g. Flux.2's left padding, attended as in a plain run), and its tokens from `end` to
    `length` only pad it (masked). Rows not named: (0, length). Immutable; lives on the RunState (run.text_keys).
    Token t of the conditioning is key `prompt_start + t` of an attention call (AttnCall.prompt_start: where the
    family's hook says the conditioning's tokens begin, after any tokens the model prepends inside its forward)."""

    def __init__(self, length, rows=None):
        self.length = int(length)
        self.rows = {key: (int(shift), int(end)) for key, (shift, end) in (rows or {}).items()}

    def __deepcopy__(self, memo):
        return self

    @property
    def padded(self):
        return any(end < self.length for _, end in self.rows.values())

    def row(self, role, cond):
        return self.rows.get((role, bool(cond)), (0, self.length))

    def columns(self, positions, role="target", cond=True):
        """Token positions of a row's prompt -> positions among the conditioning's tokens."""
        shift = self.row(role, cond)[0]
        return [shift + int(p) for p in positions]

    def end(self, role, cond):
        """Conditioning tokens [0, end) of a row of this role / cond flag are its own; [end, length) pad it."""
        return self.row(role, cond)[1]

    def keep(self, roles, conds, start, n_keys, device, store=None):
        """Bool [B, n_keys]: False at the keys start + [end, length) that pad each row's prompt; None when no row of
        this call is padded. Built on the device without host data (one fill per row), cached in `store` (a run's
        store) per layout."""
        ends = [min(self.end(r, c), self.length) for r, c in zip(roles, conds)]
        if all(e >= self.length for e in ends):
            return None
        key = (tuple(ends), int(start), self.length, int(n_keys), torch.device(device))
        cache = store.setdefault(KEEP_KEY, {}) if store is not None else {}
        keep = cache.get(key)
        if keep is None:
            pos = torch.arange(n_keys, device=device)
            stops = torch.cat([torch.full((1,), start + e, device=device) for e in ends])
            keep = cache[key] = (pos[None] < stops[:, None]) | (pos[None] >= start + self.length)
        return keep


def text_keys_of(run):
    """The run's TextKeys, or None (no run, or a conditioning the pack did not lay out)."""
    return getattr(run, "text_keys", None) if run is not None else None


def word_columns(run, positions, role="target"):
    """Word token positions (in the prompt of a `role` row) -> positions among the conditioning's tokens: shifted by
    any text the model put first (Flux.2's left padding), unchanged otherwise."""
    keys = text_keys_of(run)
    return [int(p) for p in positions] if keys is None else keys.columns(positions, role)
