"""Never a silent no-op: a MODEL carrying techniques that act only inside the pack's samplers warns, once per
sampling run, in the log and under the running node in ComfyUI's web UI, when something else samples it (KSampler,
SamplerCustomAdvanced with a stock guider)."""
import logging

import comfy.patcher_extension

from .controller import CHAIN_KEY, LATENT_HOOKS_KEY, RUN_KEY

CHECK_KEY = "edit_pack_run_check"
log = logging.getLogger(__name__)


def tell(text, level=logging.INFO):
    """Log `text` and, inside a prompt run by ComfyUI's server, show it under the executing node."""
    log.log(level, text)
    try:
        from server import PromptServer
        from comfy_execution.utils import get_executing_context
    except ImportError:  # ComfyUI without its server module (embedded use)
        return
    server, context = getattr(PromptServer, "instance", None), get_executing_context()
    if server is not None and context is not None:
        server.send_progress_text(text, context.node_id)


def technique_name(hook):
    """The name a latent hook is given in messages: its `technique`, else its class name without "Hook"."""
    return getattr(hook, "technique", None) or type(hook).__name__.replace("Hook", "")


def idle_techniques(model_options):
    """Names of the techniques in these model options that do nothing without the pack's run state."""
    chain = model_options.get("transformer_options", {}).get(CHAIN_KEY, ())
    names = [c.idle_without_run() for c in chain if hasattr(c, "idle_without_run")]  # duck-typed others: no
    names += [technique_name(h) for h in model_options.get(LATENT_HOOKS_KEY, ())]
    return list(dict.fromkeys(n for n in names if n))


def warning_text(names):
    return (f"Attention Edit: {', '.join(names)} on this MODEL act only inside the pack's samplers and do nothing in "
            f"this sampler (KSampler, or SamplerCustomAdvanced with a stock guider). Sample with the Edit Sampler, "
            f"FlowEdit, or SamplerCustomAdvanced with the Edit Guider.")


class RunCheck:
    """OUTER_SAMPLE wrapper: one warning per sampling run whose guider carries no pack run state."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        options = executor.class_obj.model_options
        if RUN_KEY not in options.get("transformer_options", {}):
            names = idle_techniques(options)
            if names:
                tell(warning_text(names), logging.WARNING)
        return executor(*args, **kwargs)


def add_run_check(model):
    """Install the check on `model` (a clone the caller owns); idempotent."""
    kind = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    if not model.get_wrappers(kind, CHECK_KEY):
        model.add_wrapper_with_key(kind, CHECK_KEY, RunCheck())
