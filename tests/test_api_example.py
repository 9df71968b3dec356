"""scripts/api_example.py: prompt preparation, and the whole upload -> /prompt -> /history -> /view round trip."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import api_example  # noqa: E402

WEIGHTS = ROOT / "embedded" / "weights" / "shapes_unet.safetensors"


def workflow():
    return json.loads(api_example.DEFAULT_WORKFLOW.read_text())


def test_prepare_sets_image_and_titled_prompts_only():
    original = workflow()
    prompt = api_example.prepare(original, "upload/new.png", "a red square", "a green square", steps=3)
    assert original == workflow()  # the loaded workflow is not modified
    titles = {node.get("_meta", {}).get("title"): node for node in prompt.values()}
    assert titles["source prompt"]["inputs"]["text"] == "a red square"
    assert titles["target prompt"]["inputs"]["text"] == "a green square"
    assert titles["negative / empty prompt"]["inputs"]["text"] == ""
    [loader] = [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    assert loader["inputs"]["image"] == "upload/new.png"
    assert [n["inputs"]["steps"] for n in prompt.values() if "steps" in n["inputs"]] == [3]
    changed = {k for k in prompt if prompt[k] != original[k]}
    assert {prompt[k]["class_type"] for k in changed} == {"LoadImage", "CLIPTextEncode", "AttentionEditInvert"}
    assert len(changed) == 4


def test_prepare_without_titles_uses_the_first_two_encoders_and_rejects_ui_format():
    prompt = workflow()
    for node in prompt.values():
        node.pop("_meta", None)
    out = api_example.prepare(prompt, "x.png", "src", "tgt")
    encoders = sorted((k for k, n in out.items() if n["class_type"] == "CLIPTextEncode"), key=int)
    assert [out[k]["inputs"]["text"] for k in encoders] == ["src", "tgt", ""]
    ui = json.loads((ROOT / "workflows" / "ui" / "proedit_embedded_unet.json").read_text())
    with pytest.raises(ValueError, match="API-format"):
        api_example.prepare(ui, "x.png")
    del prompt[next(k for k, n in prompt.items() if n["class_type"] == "LoadImage")]
    with pytest.raises(ValueError, match="LoadImage"):
        api_example.prepare(prompt, "x.png")


def test_script_edits_a_new_image_through_a_local_server(tmp_path):
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(image).rectangle((20, 20, 44, 44), fill=(220, 30, 30))
    source = tmp_path / "my_square.png"
    image.save(source)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_example.py"), "--image", str(source),
                           "--source-prompt", "a red square on a blue background",
                           "--target-prompt", "a green square on a blue background",
                           "--steps", "4", "--threads", "1", "--out", str(out), "--timeout", "240"],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["proedit_embedded_unet_00001_.png"]
    assert str(written[0]) in proc.stdout
    result = Image.open(written[0])
    assert result.format == "PNG" and result.size == (64, 64)
