"""Where the pack and the ComfyUI runtime live."""
import os
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent


def comfyui_dir() -> Path:
    """The ComfyUI tree: $COMFYUI_DIR, else the one scripts/setup.sh recorded."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        return Path(env).resolve()
    recorded = PACK_DIR / ".comfyui_path"
    if recorded.exists():
        return Path(recorded.read_text().strip())
    raise RuntimeError("ComfyUI not found: run `bash scripts/setup.sh` or set COMFYUI_DIR to a ComfyUI checkout")
