"""Make ComfyUI importable from standalone scripts (training, gates): path + CPU flag, before any comfy import.

Inside a running ComfyUI this is a no-op apart from the path check."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def comfy_dir():
    """ComfyUI root: $COMFYUI_DIR, else the path recorded by scripts/setup.sh in .comfyui_path."""
    d = os.environ.get("COMFYUI_DIR")
    if not d:
        with open(os.path.join(_HERE, "..", ".comfyui_path")) as f:
            d = f.read().strip()
    return d


def setup(cpu=True):
    """Put ComfyUI on sys.path and (for scripts) force CPU + SDPA attention before comfy.model_management is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = comfy_dir()
    if d not in sys.path:
        sys.path.insert(0, d)
    if "comfy.model_management" not in sys.modules:
        from comfy.cli_args import args
        args.cpu = cpu
        args.use_pytorch_cross_attention = True  # SDPA: much faster on CPU than ComfyUI's default there


def add_threads_argument(parser):
    """The scripts' --threads option (default 1: the recorded runs used one core each, side by side)."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for this run (2 uses both cores of a 2-core machine)")
