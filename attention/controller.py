"""Controllers: small immutable objects that take part in every attention call, composed as an ordered chain.

A MODEL carries its chain in model_options["transformer_options"][CHAIN_KEY]. For every call, each controller
that wants it gets `before(call)` in chain order (may replace Q/K/V via call.set_qkv), then attention is computed
once, then each gets `after(call, out)` in chain order (may read call.probs(), store tensors in call.run.store,
or return a new output for some rows).
"""

CHAIN_KEY = "edit_pack_chain"
RUN_KEY = "edit_pack_run"
LATENT_HOOKS_KEY = "edit_pack_latent_hooks"  # model_options: the latent hooks (latent_ops.latent_hooks)


class Controller:
    """Base controller: passes everything through."""
    kinds = ("self", "cross", "joint")
    technique = None  # a technique's name for users, when it acts only inside the pack's samplers

    def idle_without_run(self):
        """This controller's technique name when it does nothing without the pack's run state, else None."""
        return self.technique

    def wants(self, call):
        return call.kind in self.kinds

    def before(self, call):
        pass

    def after(self, call, out):
        return out

    def __deepcopy__(self, memo):  # immutable configuration: shared across MODEL clones
        return self

    def __repr__(self):
        return type(self).__name__


def chain_of(model):
    """The controller chain a MODEL (ModelPatcher) carries."""
    return tuple(model.model_options.get("transformer_options", {}).get(CHAIN_KEY, ()))


def run_chain(chain, call, compute):
    """Run the controllers of `chain` on one call; `compute(call)` gives plain attention [B, H, L, D]."""
    active = [c for c in chain if c.wants(call)]
    for c in active:
        c.before(call)
    out = compute(call)
    for c in active:
        out = c.after(call, out)
    return out
