"""AttnCall: the one view of an attention call that every controller gets, for U-Net and MMDiT alike."""

import logging

from comfy.ldm.modules import attention as comfy_attention

from .indexing import selector
from .masked import add_bias as sum_bias, as_bias, keep_bias, masked_attention
from .run_state import step_from_sigmas
from .text_keys import text_keys_of, word_columns
from .token_masks import tokens_on

log = logging.getLogger(__name__)


class AttnCall:
    """One attention call. q, k, v are [batch, heads, tokens, head_dim].

    kind: "self" or "cross" (U-Net) or "joint" (MMDiT: text tokens first, then image tokens).
    img: slice of the image tokens among the queries (and keys for self/joint); txt: slice of the text keys.
    grid: (h, w) of the image tokens; latent_hw: (H, W) of the latent. layer: e.g. "input.4.0" or "double.3".
    prompt_start: the key of the conditioning's first token (default txt.start; later when the model puts tokens
    of its own before it inside its forward, as SD3's registers).
    step / sigma: given, or None to read them lazily from the transformer options (`options`).
    roles / conds: per batch row, "source" / "target" / "aux" and True for the conditional pass.
    mask: the model's own attention mask (Flux), or None. Text keys that pad a row's prompt (branches of different
    prompt lengths, attention/text_keys.py) are masked too: `bias()` holds both, `key_bias` the padding alone, and
    attend() / probs() apply them, so a controller that computes attention or maps through the call gets them.
    """

    def __init__(self, q, k, v, kind, layer, img, txt, grid, latent_hw, step, sigma, roles, conds, run,
                 mask=None, block_type=None, block_index=0, options=None, prompt_start=None):
        self.q, self.k, self.v = q, k, v
        self.kind, self.layer = kind, layer
        self.img, self.txt, self.grid, self.latent_hw = img, txt, grid, latent_hw
        self.prompt_start = (txt.start if txt is not None else 0) if prompt_start is None else prompt_start
        self._step, self._sigma, self._options = step, sigma, options or {}
        self.roles, self.conds = roles, conds
        self.run = run
        self.mask = mask
        self.block_type, self.block_index = block_type, block_index
        self.changed = False
        self.extra_bias = None  # what controllers added with add_bias()
        self._probs = None
        self._keep = self._key_bias = False  # not looked up yet

    @property
    def key_keep(self):
        """Bool [B, n_keys]: False at text keys that only pad a row's prompt; None when none does (cached per run)."""
        if self._keep is False:
            keys = text_keys_of(self.run)
            self._keep = None if keys is None or not keys.padded or self.txt is None else keys.keep(
                self.roles, self.conds, self.prompt_start, self.k.shape[2], self.k.device, self.run.store)
        return self._keep

    @property
    def key_bias(self):
        """The padding mask as an additive bias [B, 1, 1, n_keys] in q's dtype, or None."""
        if self._key_bias is False:
            keep = self.key_keep
            self._key_bias = None if keep is None else keep_bias(keep, self.q.dtype)
        return self._key_bias

    @property
    def plain(self):
        """True when the model's own kernel on the call's original q, k, v gives the answer: no controller changed
        K/V or added a bias and no text key of the call pads a prompt (else attend(), or a foreign kernel given
        bias())."""
        return not self.changed and self.key_keep is None and self.extra_bias is None

    @property
    def masked(self):
        """True when the kernel must get bias(): padded text keys or a controller's bias (the model's own mask
        alone the model passes itself)."""
        return self.key_bias is not None or self.extra_bias is not None

    def bias(self):
        """The call's whole additive attention bias (model mask + padded text keys + controllers' biases),
        broadcastable, or None."""
        return sum_bias(sum_bias(as_bias(self.mask, self.q.dtype), self.key_bias), self.extra_bias)

    def add_bias(self, bias):
        """Add an additive attention bias (broadcastable to [B, H, Lq, Lk]; heads 1) before attention is computed:
        every kernel the call reaches gets it (attend(), probs(), another node's kernel as its mask)."""
        self.extra_bias = sum_bias(self.extra_bias, bias.to(self.q.dtype))
        self._probs = None

    def warn_once(self, key, message, *args):
        """Log `message` (a logging format, with `args`) once per run and `key`."""
        told = self.run.store.setdefault("told", set()) if self.run is not None else set()
        if key not in told:
            told.add(key)
            log.warning("Attention Edit: " + message, *args)

    def warn_unmasked(self, what, padding=True):
        """`what` computes this call's attention without its bias: say once per run what that loses (padding False:
        `what` masks the padded text keys itself)."""
        if padding and self.key_bias is not None:
            self.warn_once(("padding", what), "%s takes no attention mask, so it also sees the zeros that pad the "
                           "shorter prompts (a small change to those rows); give the branches prompts of equal "
                           "token length to avoid it", what)
        if self.extra_bias is not None:
            self.warn_once(("bias", what), "%s computes attention without the bias of Region Prompt, so Region "
                           "Prompt does not act there; leave one of the two out of those layers", what)

    def text_keep(self, row):
        """Bool [n_txt]: the text keys row `row` attends (False at its prompt's padding), or None for all."""
        keep = self.key_keep
        return None if keep is None else keep[row, self.txt]

    def text_bias(self, rows=None):
        """Additive bias [b, 1, 1, n_txt] over the text keys alone (maps whose softmax runs over the text keys), for
        the batch rows `rows` (a selector; None: all), or None."""
        keep = self.key_keep
        if keep is None:
            return None
        keep = keep[:, self.txt]
        return keep_bias(keep if rows is None else keep[rows], self.q.dtype)

    def text_columns(self, positions, role="target"):
        """Token positions of a `role` row's prompt (e.g. a word's) -> positions among this call's text keys (the
        slice txt): past the text the model puts first, in the conditioning (Flux.2) or in its forward (SD3)."""
        start = self.prompt_start - self.txt.start
        return [start + c for c in word_columns(self.run, positions, role)]

    @property
    def step(self):
        """Step index of the run (set by the pack's samplers, else derived from the current sigma); lazy."""
        if self._step is None:
            run_step = self.run.step if self.run is not None else None
            self._step = run_step if run_step is not None else step_from_sigmas(self._options)
        return self._step

    @step.setter
    def step(self, value):
        self._step = value

    @property
    def sigma(self):
        """The current sigma as a float (lazy: reading it synchronises with the device)."""
        if self._sigma is None:
            sigmas = self._options.get("sigmas")
            self._sigma = float(sigmas.flatten()[0]) if sigmas is not None else 0.0
        return self._sigma

    @property
    def chunks(self):
        """The cond indices of the passes in this model call (ComfyUI's cond_or_uncond: 0 cond, 1 uncond)."""
        return list(self._options.get("cond_or_uncond") or [])

    @property
    def heads(self):
        return self.q.shape[1]

    @property
    def scale(self):
        return self.q.shape[-1] ** -0.5

    def rows(self, role=None, cond=None):
        """Indices of the batch rows with this role (and cond flag), as a list."""
        return [i for i, (r, c) in enumerate(zip(self.roles, self.conds))
                if (role is None or r == role) and (cond is None or c == cond)]

    def index(self, positions):
        """Selector of these batch rows / token positions (a slice, or a device index cached per run)."""
        return selector(positions, self.q.device, self.run.store if self.run is not None else None)

    def tokens(self, mask, dtype=None):
        """MASK [B, H, W] on this call's token grid, [B, h*w], on its device in `dtype` (default: q's), cached per
        run."""
        return tokens_on(mask, self.grid, self.q.device, dtype or self.q.dtype,
                         self.run.store if self.run is not None else None)

    def set_qkv(self, *, q=None, k=None, v=None):
        """Replace queries, keys and/or values (whole batch) before attention is computed."""
        if q is not None:
            self.q = q
        if k is not None:
            self.k = k
        if v is not None:
            self.v = v
        self.changed = True
        self._probs = None

    def probs(self):
        """Softmax attention probabilities [batch, heads, q_tokens, k_tokens] of the current q, k (cached)."""
        if self._probs is None:
            logits = (self.q @ self.k.transpose(-1, -2)) * self.scale
            bias = self.bias()
            if bias is not None:
                logits = logits + bias
            self._probs = logits.softmax(dim=-1)
        return self._probs

    def attend(self, q=None, k=None, v=None, bias=None):
        """Attention with ComfyUI's active kernel; with a mask, padded text keys or `bias` (additive, broadcastable
        to the logits) through the pack's masked kernel instead, whatever backend ComfyUI selected
        (attention/masked.py)."""
        q = self.q if q is None else q
        k = self.k if k is None else k
        v = self.v if v is None else v
        own = self.bias()
        if own is None and bias is None:
            return comfy_attention.optimized_attention(q, k, v, q.shape[1], skip_reshape=True,
                                                       skip_output_reshape=True)
        return masked_attention(q, k, v, sum_bias(own, bias))

    def image_map(self, values):
        """Reshape per-image-token values [..., n_img] to [..., h, w] on the token grid."""
        h, w = self.grid
        return values.reshape(*values.shape[:-1], h, w)
