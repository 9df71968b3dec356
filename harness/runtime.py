"""Boot the real ComfyUI in-process on the CPU, load the pack with ComfyUI's own loader, run API prompts.

Booting costs several seconds, so it happens once per process (`boot()` is idempotent).
"""
import asyncio
import sys
import uuid

from .paths import PACK_DIR, comfyui_dir

_state = {}


def boot(cpu=True):
    """Import ComfyUI, register its built-in nodes and load this pack; returns the pack's module."""
    if "pack" in _state:
        return _state["pack"]
    root = str(comfyui_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args  # must be configured before comfy.model_management is imported
    args.cpu = cpu
    args.use_pytorch_cross_attention = True
    args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401  (ComfyUI requires it before `nodes`)
    import nodes
    loop = asyncio.new_event_loop()
    _state["loop"] = loop
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = loop.run_until_complete(nodes.load_custom_node(str(PACK_DIR)))
    if not ok:
        raise RuntimeError("ComfyUI failed to load the pack (see the log above)")
    _state["pack_nodes"] = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    _state["pack"] = sys.modules[str(PACK_DIR).replace(".", "_x_")]
    return _state["pack"]


def pack_module(name):
    """A submodule of the pack as ComfyUI loaded it, e.g. pack_module('attention.chain')."""
    import importlib
    boot()
    return importlib.import_module(_state["pack"].__name__ + "." + name)


def pack_node_names():
    boot()
    return list(_state["pack_nodes"])


class _Server:
    """The minimal server object PromptExecutor reports to."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class PromptError(RuntimeError):
    """A prompt failed validation or execution; `.details` has ComfyUI's own report."""

    def __init__(self, message, details):
        super().__init__(message)
        self.details = details


def run_prompt(prompt, outputs=None):
    """Validate and execute an API-format prompt with ComfyUI's executor.

    Returns {node_id: tuple of that node's outputs (first batch entry per slot)} for every executed node.
    Raises PromptError with ComfyUI's message when validation or execution fails.
    """
    import execution
    boot()
    loop = _state["loop"]
    prompt_id = str(uuid.uuid4())
    valid = loop.run_until_complete(execution.validate_prompt(prompt_id, prompt, outputs))
    if not valid[0]:
        raise PromptError(f"invalid prompt: {valid[1]} {valid[3]}", valid)
    server = _Server()
    executor = execution.PromptExecutor(server, cache_type=False, cache_args={"lru": 0, "ram": 0})
    loop.run_until_complete(executor.execute_async(prompt, prompt_id, {}, valid[2]))
    if not executor.success:
        errors = [d for e, d in executor.status_messages if e == "execution_error"]
        message = errors[0].get("exception_message", "execution failed") if errors else "execution failed"
        raise PromptError(message.strip(), errors)
    results = {}
    for node_id in prompt:
        entry = executor.caches.outputs.get(node_id)
        if entry is not None:
            results[node_id] = tuple(slot[0] if isinstance(slot, list) and slot else slot for slot in entry.outputs)
    return results
