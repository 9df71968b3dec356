"""The example workflows' input images (workflows/inputs/*.png), made available in ComfyUI's input folder."""
import logging
import shutil
from pathlib import Path

INPUTS = Path(__file__).resolve().parent / "workflows" / "inputs"


def provide(input_dir=None):
    """Copy each example input image the input folder (default: ComfyUI's) lacks; never overwrites a file.

    Returns the names copied; a folder that cannot be written is logged, not raised (loading the nodes goes on)."""
    if input_dir is None:
        import folder_paths
        input_dir = folder_paths.get_input_directory()
    target = Path(input_dir)
    missing = [image for image in sorted(INPUTS.glob("*.png")) if not (target / image.name).exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
        for image in missing:
            shutil.copyfile(image, target / image.name)
    except OSError as e:
        logging.warning("[Attention Edit] could not copy the example workflows' input images to %s: %s", target, e)
        return []
    if missing:
        logging.info("[Attention Edit] copied the example workflows' input images to %s: %s", target,
                     ", ".join(image.name for image in missing))
    return [image.name for image in missing]
