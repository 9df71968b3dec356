"""What a node tells its user: a log line, and the node's text in ComfyUI's web UI when a server is running."""
import logging

from comfy_execution.utils import get_executing_context


def show(text):
    """logging.info(text) and, inside a prompt run by ComfyUI's server, the text under the executing node."""
    logging.info(text)
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI without its server module (embedded use)
        return
    server, context = getattr(PromptServer, "instance", None), get_executing_context()
    if server is not None and context is not None:
        server.send_progress_text(text, context.node_id)
