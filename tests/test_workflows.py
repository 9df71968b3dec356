"""Example workflows: up to date, valid against the pack's node definitions, and the embedded ones run."""
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
sys.path.insert(0, str(WORKFLOWS))


@pytest.fixture(scope="module")
def built(comfy):
    """Every workflow rebuilt in memory; the embedded cases' input images placed in ComfyUI's input folder."""
    import build
    import folder_paths
    for image in (WORKFLOWS / "inputs").glob("*.png"):
        shutil.copy(image, Path(folder_paths.get_input_directory()) / image.name)
    return build.build_all()


def test_workflow_files_are_up_to_date(built):
    for name, (api, ui) in built.items():
        assert json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()) == api, f"{name}: run workflows/build.py"
        assert json.loads((WORKFLOWS / "ui" / f"{name}.json").read_text()) == ui, f"{name}: run workflows/build.py"
    on_disk = {p.stem for p in (WORKFLOWS / "ui").glob("*.json")} | {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    assert on_disk == set(built), "stale workflow files"


def test_ui_workflows_validate_against_node_definitions(comfy, built):
    from harness.workflow_format import check_ui_workflow
    for name in built:
        ui = json.loads((WORKFLOWS / "ui" / f"{name}.json").read_text())
        assert check_ui_workflow(ui) == [], name


def test_ui_check_catches_broken_workflows(comfy, built):
    from harness.workflow_format import check_ui_workflow
    ui = json.loads((WORKFLOWS / "ui" / "invert_edit_embedded_unet.json").read_text())
    broken = json.loads(json.dumps(ui))
    broken["nodes"][0]["type"] = "NoSuchNode"
    assert any("unknown node type" in p for p in check_ui_workflow(broken))
    broken = json.loads(json.dumps(ui))
    invert = next(n for n in broken["nodes"] if n["type"] == "AttentionEditInvert")
    invert["widgets_values"][1] = "no_such_scheduler"
    assert any("scheduler" in p for p in check_ui_workflow(broken))
    broken = json.loads(json.dumps(ui))
    broken["links"][0][2] = 2  # from the VAE slot into a MODEL/IMAGE input
    assert check_ui_workflow(broken)


def test_api_workflows_validate(comfy, built):
    import execution
    for name, (api, _) in built.items():
        if "embedded" not in name:
            continue  # real-checkpoint variants name model files this machine does not have
        valid = comfy._state["loop"].run_until_complete(execution.validate_prompt("x", api, None))
        assert valid[0], (name, valid[1], valid[3])


@pytest.mark.parametrize("name", sorted(p.stem for p in (WORKFLOWS / "api").glob("*embedded*.json")))
def test_embedded_api_workflow_runs(comfy, built, tmp_path, name):
    import folder_paths
    folder_paths.set_output_directory(str(tmp_path))
    comfy.run_prompt(json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()))
    assert list(tmp_path.rglob("*.png"))
