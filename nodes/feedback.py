"""What a node tells its user: a log line, and the node's text in ComfyUI's web UI when a server is running."""
from ..attention.run_check import tell


def show(text):
    """logging.info(text) and, inside a prompt run by ComfyUI's server, the text under the executing node."""
    tell(text)
