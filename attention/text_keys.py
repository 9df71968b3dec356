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
    rows: {(role, cond flag): (shift, lo, hi)}: a row's own tokens are conditioning tokens [lo, hi) (the rest of
    [0, length) only pads it: masked), its prompt token p is conditioning token shift + p (shift >= lo: text the
    model itself puts first, e.g. Flux.2's left padding, attended as in a plain run). Rows not named: (0, 0,
    length). Immutable; lives on the RunState (run.text_keys).
    Token t of the conditioning is key `prompt_start + t` of an attention call (AttnCall.prompt_start: where the
    family's hook says the conditioning's tokens begin, after any tokens the model prepends inside its forward)."""

    def __init__(self, length, rows=None):
        self.length = int(length)
        self.rows = {key: tuple(int(x) for x in row) for key, row in (rows or {}).items()}

    def __deepcopy__(self, memo):
        return self

    @property
    def padded(self):
        return any(hi - lo < self.length for _, lo, hi in self.rows.values())

    def row(self, role, cond):
        return self.rows.get((role, bool(cond)), (0, 0, self.length))

    def columns(self, positions, role="target", cond=True):
        """Token positions of a row's prompt -> positions among the conditioning's tokens."""
        shift = self.row(role, cond)[0]
        return [shift + int(p) for p in positions]

    def span(self, role, cond):
        """(lo, hi): the conditioning tokens that are a row's own; the others of [0, length) pad it."""
        return self.row(role, cond)[1:]

    def keep(self, roles, conds, start, n_keys, device, store=None):
        """Bool [B, n_keys]: False at the keys start + [0, length) outside each row's own span; None when no row of
        this call is padded. Built on the device without host data (two fills per row), cached in `store` (a run's
        store) per layout."""
        spans = [self.span(r, c) for r, c in zip(roles, conds)]
        if all(hi - lo >= self.length for lo, hi in spans):
            return None
        key = (tuple(spans), int(start), self.length, int(n_keys), torch.device(device))
        cache = store.setdefault(KEEP_KEY, {}) if store is not None else {}
        keep = cache.get(key)
        if keep is None:
            pos = torch.arange(n_keys, device=device)[None]
            los = torch.cat([torch.full((1, 1), start + lo, device=device) for lo, _ in spans])
            his = torch.cat([torch.full((1, 1), start + hi, device=device) for _, hi in spans])
            keep = cache[key] = ((pos >= los) & (pos < his)) | (pos < start) | (pos >= start + self.length)
        return keep


def text_keys_of(run):
    """The run's TextKeys, or None (no run, or a conditioning the pack did not lay out)."""
    return getattr(run, "text_keys", None) if run is not None else None


def word_columns(run, positions, role="target"):
    """Word token positions (in the prompt of a `role` row) -> positions among the conditioning's tokens: shifted by
    any text the model put first (Flux.2's left padding), unchanged otherwise."""
    keys = text_keys_of(run)
    return [int(p) for p in positions] if keys is None else keys.columns(positions, role)
