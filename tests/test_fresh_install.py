"""The README's install into a fresh ComfyUI: a copy of the ComfyUI tree, the pack git-cloned into its custom_nodes,
its requirements installed, no .comfyui_path and no COMFYUI_DIR; ComfyUI's own main.py on 127.0.0.1 (--cpu) runs
every embedded API workflow over HTTP, then again through comfy-api-simplified (nodes found by `_meta.title`)."""
import io
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.paths import PACK_DIR, comfyui_dir
from harness.server import ComfyServer, pack_folder_name

WORKFLOW_TIMEOUT = 600


def readme_install_block():
    text = (PACK_DIR / "README.md").read_text()
    section = text.split("## Installing into your own ComfyUI", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def shipped_files():
    """What a clone of the working tree would hold: tracked and untracked, not ignored files, as they are now."""
    out = subprocess.run(["git", "-C", str(PACK_DIR), "ls-files", "-z", "-co", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return {f for f in out.split("\0") if f and (PACK_DIR / f).is_file()}


def git_clone(dest):
    """`git clone` of this repository, brought to the working tree's state (uncommitted edits included)."""
    subprocess.run(["git", "clone", "-q", str(PACK_DIR), str(dest)], check=True)
    files = shipped_files()
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACK_DIR / name, dest / name)
    committed = subprocess.run(["git", "-C", str(dest), "ls-files", "-z"], check=True,
                               capture_output=True).stdout.decode().split("\0")
    for name in set(filter(None, committed)) - files:
        (dest / name).unlink()


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    """(ComfyUI root, pack folder) of a fresh install done as the README says."""
    root = tmp_path_factory.mktemp("fresh") / "ComfyUI"
    shutil.copytree(comfyui_dir(), root, ignore=shutil.ignore_patterns("__pycache__", "attention_edit_*"))
    shutil.rmtree(root / "output", ignore_errors=True)
    assert not (root / "custom_nodes" / pack_folder_name()).exists()
    pack = root / "custom_nodes" / pack_folder_name()
    git_clone(pack)
    # pip install -r requirements.txt + requests (README); offline: this venv has them, so pip only checks
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check",
                    "-r", str(pack / "requirements.txt"), "requests"], check=True)
    return root, pack


@pytest.fixture(scope="module")
def server(install):
    root, pack = install
    assert not (pack / ".comfyui_path").exists() and not (pack / ".venv").exists()
    assert not list((root / "input").glob("attention_edit_*"))
    with ComfyServer(comfyui=root, base=root, frontend=True, threads=1) as s:  # COMFYUI_DIR is not passed on
        yield s


def test_readme_install_is_what_this_test_does():
    block = readme_install_block()
    assert "cd ComfyUI/custom_nodes" in block
    assert f"git clone <this repository> {pack_folder_name()}" in block
    assert re.search(rf"pip install -r {pack_folder_name()}/requirements.txt", block)
    assert re.search(r"pip install .*\brequests\b", block)


def test_pack_loads_and_provides_the_example_inputs(install, server):
    root, pack = install
    log = server.log()
    pack_lines = [line for line in log.splitlines() if f"custom_nodes/{pack_folder_name()}" in line]
    assert any("seconds" in line for line in pack_lines) and not any("IMPORT FAILED" in line for line in pack_lines), \
        server.log_tail()
    assert "[Attention Edit] copied the example workflows' input images" in log
    for image in (pack / "workflows" / "inputs").glob("*.png"):
        assert (root / "input" / image.name).read_bytes() == image.read_bytes()


def embedded_workflows(pack):
    return sorted((pack / "workflows" / "api").glob("*embedded*.json"))


def test_every_embedded_workflow_runs_over_http(install, server):
    from PIL import Image
    names = [p.stem for p in embedded_workflows(install[1])]
    assert any(n.startswith("source_injection") for n in names) and len(names) >= 12
    for path in embedded_workflows(install[1]):
        entry = server.run(json.loads(path.read_text()), timeout=WORKFLOW_TIMEOUT)
        saved = [f for _, f in server.output_files(entry, "images") if f["type"] == "output"]
        assert len(saved) == 1, path.stem
        assert Image.open(io.BytesIO(server.view(saved[0]))).size == (64, 64), path.stem


def test_every_embedded_workflow_runs_through_comfy_api_simplified(install, server):
    """Titles address the nodes: a new target prompt (in the Region Prompt workflows its prompt and words) and
    output prefix (so the edit runs again, not from cache)."""
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper
    from PIL import Image
    api = ComfyApiWrapper(server.url)
    with ThreadPoolExecutor(1) as pool:
        for path in embedded_workflows(install[1]):
            workflow = ComfyWorkflowWrapper(str(path))
            if path.stem.startswith(("flowedit_region_mask", "region_add_mask")):
                workflow.set_node_param("region prompt", "prompt", "a green square on a black background")
                workflow.set_node_param("region prompt", "words", "green square")
            elif path.stem.startswith("flowedit_keep_mask"):  # the recolour: Region Prompt names the new colour
                workflow.set_node_param("region prompt", "prompt", "a green circle on a black background")
                workflow.set_node_param("region prompt", "words", "green circle")
            else:
                workflow.set_node_param("target prompt", "text", "a green circle on a blue background")
            workflow.set_node_param("Save Image", "filename_prefix", f"api_simplified/{path.stem}")
            images = pool.submit(api.queue_and_wait_images, workflow, "Save Image").result(WORKFLOW_TIMEOUT)
            [(name, data)] = images.items()
            assert name.startswith(path.stem) and Image.open(io.BytesIO(data)).size == (64, 64), path.stem
