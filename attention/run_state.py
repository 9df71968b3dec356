"""Per-run state shared by the controllers of one sampling run (never stored on module globals)."""
import torch

EVAL_KEY = "model_eval"            # count of the sampler's model evaluations (one calc_cond_batch each)
PARTNER_KEY = "partner_kv"         # (layer, role) -> (eval, K/V) of partner rows kept for a later call
MISSING_KEY = "partner_missing"    # cond indices of calls that lacked their partner rows, this evaluation
SPLIT_KEY = "passes_split"         # set once a call lacked partner rows: keep partners from then on


class RunState:
    """What a sampling run tells the controllers: branch layout, step, phase, and a scratch store.

    branches: the role of each block of the latent batch, in order, e.g. ("source", "target").
    per_branch: latent batch items per branch (the latent batch is branches x per_branch).
    text_keys: where each row's prompt tokens lie among the text keys and which are padding (or None).
    """

    def __init__(self, branches=("target",), per_branch=1, phase="sample", total_steps=0, latent_hw=None):
        self.branches = tuple(branches)
        self.per_branch = per_branch
        self.phase = phase
        self.total_steps = total_steps
        self.step = None  # None: derived from the current sigma; samplers of the pack set it
        self.latent_hw = latent_hw
        self.text_keys = None  # TextKeys (attention/text_keys.py) of a conditioning the pack laid out, else None
        self.store = {}

    def __deepcopy__(self, memo):  # travels inside model_options, which ComfyUI deep-copies on clone
        return self

    def row_roles(self, batch, cond_or_uncond):
        """Role and cond flag of each row of a model batch made of len(cond_or_uncond) chunks."""
        chunks = max(len(cond_or_uncond), 1)
        chunk = batch // chunks
        width = len(self.branches) * self.per_branch
        roles, conds = [], []
        for row in range(batch):
            within = row % chunk
            roles.append(self.branches[(within % width) // self.per_branch] if chunk % width == 0 else "target")
            conds.append(cond_or_uncond[row // chunk] == 0 if cond_or_uncond else True)
        return roles, conds

    def begin_eval(self):
        """A new model evaluation (all passes of one denoiser call) starts."""
        self.store[EVAL_KEY] = self.store.get(EVAL_KEY, 0) + 1
        self.store.pop(MISSING_KEY, None)

    def keep_partner(self, layer, role, kv):
        """Keep (a copy of) partner rows' K/V of this evaluation for a later call of it; only once passes were seen
        split, so a batched run keeps nothing."""
        if self.store.get(SPLIT_KEY):
            kv = tuple(t.clone() for t in kv)
            self.store.setdefault(PARTNER_KEY, {})[(layer, role)] = (self.store.get(EVAL_KEY), kv)

    def partner(self, layer, role):
        """Partner K/V kept by an earlier call of this evaluation, or None."""
        entry = self.store.get(PARTNER_KEY, {}).get((layer, role))
        return entry[1] if entry is not None and entry[0] == self.store.get(EVAL_KEY) else None

    def partner_missing(self, chunks):
        """A call (of these cond indices) needed partner rows that are in another call: re-run it afterwards."""
        self.store.setdefault(MISSING_KEY, set()).update(chunks)
        self.store[SPLIT_KEY] = True

    def release(self):
        """Drop everything the run kept (caches of K/V, maps)."""
        self.store.clear()


def step_from_sigmas(transformer_options):
    """Index of the current sigma in the run's schedule (for runs without a RunState)."""
    sigmas = transformer_options.get("sample_sigmas")
    sigma = transformer_options.get("sigmas")
    if sigmas is None or sigma is None:
        return 0
    return int(torch.argmin((sigmas.to(sigma.device) - sigma.flatten()[0]).abs()).item())
