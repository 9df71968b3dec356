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
    for values in (lambda v: v[:1], lambda v: v[:1] + ["url"]):  # upload widget value missing / not the frontend's
        broken = json.loads(json.dumps(ui))
        load = next(n for n in broken["nodes"] if n["type"] == "LoadImage")
        load["widgets_values"] = values(load["widgets_values"])
        assert any("LoadImage" in p for p in check_ui_workflow(broken)), load["widgets_values"]


def test_image_loaders_save_the_frontends_upload_widget(built):
    """As the real frontend saves them: its image-upload widget ("upload", value "image") follows the node's
    required widgets: LoadImage [filename, "image"], LoadImageMask [filename, channel, "image"]."""
    seen = set()
    for name, (_, ui) in built.items():
        for node in ui["nodes"]:
            values = node["widgets_values"]
            if node["type"] == "LoadImage":
                assert len(values) == 2 and values[0].endswith(".png") and values[1] == "image", (name, values)
            elif node["type"] == "LoadImageMask":
                assert (len(values) == 3 and values[0].endswith(".png")
                        and values[1] in ("alpha", "red", "green", "blue") and values[2] == "image"), (name, values)
            else:
                continue
            seen.add(node["type"])
    assert seen == {"LoadImage", "LoadImageMask"}


# ComfyUI model folder of each loader input the real-checkpoint workflows use
MODEL_INPUTS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("UNETLoader", "unet_name"): "diffusion_models",
                ("DualCLIPLoader", "clip_name1"): "text_encoders", ("DualCLIPLoader", "clip_name2"): "text_encoders",
                ("CLIPLoader", "clip_name"): "text_encoders", ("VAELoader", "vae_name"): "vae",
                ("CLIPVisionLoader", "clip_name"): "clip_vision",
                **{("TripleCLIPLoader", f"clip_name{i}"): "text_encoders" for i in (1, 2, 3)}}


def test_real_checkpoint_api_workflows_validate_given_their_files(comfy, built, tmp_path):
    """The SD1.5 / SDXL / FLUX-dev variants pass ComfyUI's own prompt validation (node types, links, combo values
    against the loaders' file lists as /object_info reports them) once the model files they name exist: empty
    stand-ins in temporary model folders and input folder."""
    import execution
    import folder_paths
    needed = {}
    for name, (api, _) in built.items():
        if "embedded" in name:
            continue
        for node in api.values():
            for key, value in node["inputs"].items():
                if (node["class_type"], key) in MODEL_INPUTS:
                    needed.setdefault(MODEL_INPUTS[(node["class_type"], key)], set()).add(value)
                elif node["class_type"] in ("LoadImage", "LoadImageMask") and key == "image":
                    needed.setdefault("input", set()).add(value)
    assert {"checkpoints", "diffusion_models", "text_encoders", "vae", "clip_vision", "input"} <= set(needed)
    for folder, files in needed.items():
        (tmp_path / folder).mkdir()
        for f in files:
            (tmp_path / folder / f).write_bytes(b"")
    original_input = folder_paths.get_input_directory()
    try:
        folder_paths.set_input_directory(str(tmp_path / "input"))
        for folder in needed.keys() - {"input"}:
            folder_paths.add_model_folder_path(folder, str(tmp_path / folder))
        for name, (api, _) in built.items():
            if "embedded" not in name:
                valid = comfy._state["loop"].run_until_complete(execution.validate_prompt("x", api, None))
                assert valid[0], (name, valid[1], valid[3])
    finally:
        folder_paths.set_input_directory(original_input)
        for folder in needed.keys() - {"input"}:
            folder_paths.folder_names_and_paths[folder][0].remove(str(tmp_path / folder))
            folder_paths.filename_list_cache.pop(folder, None)  # drop the listing that holds the stand-ins


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


@pytest.mark.parametrize("name", [f"{workflow}_embedded_{denoiser}" for denoiser in ("unet", "flux")
                                  for workflow in ("flowedit_keep_mask", "region_add_mask")])
def test_drawn_mask_workflows_edit_their_case_in_place(comfy, built, tmp_path, name):
    """The recolour and the addition examples do their embedded edit where the mask says, as the demo checks:
    the target's shape and colour, centre within 1 px, area x0.9-1.1, the source's own pixels outside the mask."""
    import build
    import folder_paths
    import numpy as np
    from PIL import Image
    from embedded import metrics
    folder_paths.set_output_directory(str(tmp_path))
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    comfy.run_prompt(api)
    [png] = tmp_path.rglob("*.png")
    edited = np.asarray(Image.open(png).convert("RGB"), np.float32) / 255.0
    case = build.case_of(api)
    layout = metrics.layout_check(edited, case.target)
    assert layout["success"] and layout["shift"] <= 1.0 and 0.9 <= layout["area_ratio"] <= 1.1, (name, layout)
    assert metrics.psnr(edited, build.source_pixels(case), case.masks(64)[1]) >= 60.0, name


def test_every_pack_node_has_an_embedded_example(comfy, built):
    used = {node["class_type"] for name, (api, _) in built.items() if "embedded" in name for node in api.values()}
    assert set(comfy.pack_node_names()) <= used, sorted(set(comfy.pack_node_names()) - used)


def test_every_api_node_has_a_title_defaulting_to_its_display_name(built):
    """As the frontend's Export (API) writes them (comfy-api-simplified finds nodes by `_meta.title`)."""
    import nodes
    for name, (api, ui) in built.items():
        titled = {str(n["id"]): n["title"] for n in ui["nodes"] if "title" in n}
        for node_id, node in api.items():
            default = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node["class_type"], node["class_type"])
            assert node["_meta"]["title"] == titled.get(node_id, default), (name, node_id)


def source_of(api, link, class_type):
    node = api[link[0]]
    assert node["class_type"] == class_type, (link, node["class_type"])
    return node


GUIDANCE_DISTILLED = ("_flux_dev", "_flux_kontext_dev", "_flux2_dev")  # FLUX.1-dev, Kontext, FLUX.2 variants


def test_flowedit_workflows_keep_outside_a_mask_with_the_papers_flux_guidance(built):
    """FlowEdit examples: Keep Outside Mask (from attention, or drawn) on the MODEL; FLUX.1-dev (and Kontext,
    FLUX.2) at the paper's guidance 1.5 (source) / 5.5 (target) through FluxGuidance, no CFG. With Region Prompt
    (every drawn-mask workflow): on the drawn mask, its CONDITIONING as the target's, latent cells inside from 20%
    coverage. The recolour (flowedit_keep_mask) adds Plug-and-Play over FlowEdit's whole window, draws into the mask
    grown by half a latent cell and pastes from the mask's own edge; the others paste over a 2 px seam."""
    flowedit = {name: api for name, (api, _) in built.items() if name.startswith("flowedit")}
    assert len(flowedit) == 36  # 12 backbones: no mask, a drawn mask, a drawn mask with Region Prompt
    for name, api in flowedit.items():
        [edit] = [n for n in api.values() if n["class_type"] == "AttentionEditFlowEdit"]
        [save] = [n for n in api.values() if n["class_type"] == "SaveImage"]
        paste = api[save["inputs"]["images"][0]]
        assert paste["class_type"] == "AttentionEditPasteOutsideMask", name  # the source's own pixels outside
        keep = source_of(api, edit["inputs"]["model"], "AttentionEditKeepOutsideMask")
        recolour = name.startswith("flowedit_keep_mask_")
        drawn = keep["inputs"]["mask"]
        if recolour:  # drawn into the mask grown by half a latent cell, pasted from the mask itself
            grown = source_of(api, drawn, "GrowMask")["inputs"]
            assert (grown["expand"], grown["tapered_corners"]) == (4, True), name
            drawn = grown["mask"]
        mask = api[drawn[0]]["class_type"]
        assert mask == ("LoadImageMask" if "_mask_" in name else "AttentionEditMaskFromAttention"), name
        assert paste["inputs"]["mask"] == drawn, name
        seam = (paste["inputs"]["grow"], paste["inputs"]["feather"])
        assert seam == ((0, 1) if recolour else (2, 2)), name
        if "_mask_" in name:
            region = source_of(api, keep["inputs"]["model"], "AttentionEditRegionPrompt")
            assert region["inputs"]["mask"] == keep["inputs"]["mask"] and keep["inputs"]["cell_threshold"] == 0.2
            target = edit["inputs"]["target_positive"]
            if name.endswith(GUIDANCE_DISTILLED):
                target = source_of(api, target, "FluxGuidance")["inputs"]["conditioning"]
            if name.endswith("_flux_kontext_dev"):  # the source image as its reference, as every branch's
                target = source_of(api, target, "ReferenceLatent")["inputs"]["conditioning"]
            assert source_of(api, target, "AttentionEditRegionPrompt") is region and target[1] == 1, name
            assert not any(n["_meta"]["title"] == "target prompt" for n in api.values()), name  # nothing left over
            injected = [n for n in api.values() if n["class_type"] == "AttentionEditSourceInjection"]
            if recolour:
                pnp = source_of(api, region["inputs"]["model"], "AttentionEditSourceInjection")
                assert pnp["inputs"]["mode"] == "query+key (Plug-and-Play)" and pnp["inputs"]["start_step"] == 0
                assert pnp["inputs"]["end_step"] == edit["inputs"]["n_max"] and injected == [pnp], name
            else:
                assert not injected, name
        if name.endswith(GUIDANCE_DISTILLED):
            assert edit["inputs"]["source_cfg"] == edit["inputs"]["target_cfg"] == 1.0
            assert source_of(api, edit["inputs"]["source_positive"], "FluxGuidance")["inputs"]["guidance"] == 1.5
            assert source_of(api, edit["inputs"]["target_positive"], "FluxGuidance")["inputs"]["guidance"] == 5.5


def test_region_add_workflows_draw_the_new_object_inside_the_drawn_mask(built):
    """Adding an object. U-Nets: Region Prompt -> cross-attention alignment of its words to the same mask
    (SAPreserveOptimizer without self-attention preservation) -> Keep Outside Mask (cells from 20%) -> Edit
    Sampler. MMDiT: Region Prompt -> Keep Outside Mask -> FlowEdit (FluxGuidance on the distilled families, the
    reference latent on Kontext). All on the drawn mask grown by half a latent cell (GrowMask); the Region Prompt's
    CONDITIONING is the target's; the source is pasted back from the drawn mask's own edge."""
    add = {name: api for name, (api, _) in built.items() if name.startswith("region_add_mask")}
    assert len(add) == 12
    for name, api in add.items():
        unet = name.endswith(("_embedded_unet", "_sd15", "_sdxl"))
        [edit] = [n for n in api.values()
                  if n["class_type"] == ("AttentionEditSampler" if unet else "AttentionEditFlowEdit")]
        keep = source_of(api, edit["inputs"]["model"], "AttentionEditKeepOutsideMask")
        mask = keep["inputs"]["mask"]
        grown = source_of(api, mask, "GrowMask")["inputs"]
        assert (grown["expand"], grown["tapered_corners"]) == (4, True) and keep["inputs"]["cell_threshold"] == 0.2
        drawn = grown["mask"]
        assert api[drawn[0]]["class_type"] == "LoadImageMask", name
        if unet:
            align = source_of(api, keep["inputs"]["model"], "AttentionEditSAPreserveOptimizer")
            region = source_of(api, align["inputs"]["model"], "AttentionEditRegionPrompt")
            assert align["inputs"]["mask"] == mask and (align["inputs"]["beta1"], align["inputs"]["beta2"]) == (0, 2)
            assert align["inputs"]["edit_tokens"] == region["inputs"]["words"], name
            assert align["inputs"]["target_prompt"] == region["inputs"]["prompt"], name
        else:  # SAPreserveOptimizer is U-Net only
            region = source_of(api, keep["inputs"]["model"], "AttentionEditRegionPrompt")
            assert not any(n["class_type"] == "AttentionEditSAPreserveOptimizer" for n in api.values()), name
        assert region["inputs"]["mask"] == mask, name
        target = edit["inputs"]["target_positive"]
        if name.endswith(GUIDANCE_DISTILLED):
            target = source_of(api, target, "FluxGuidance")["inputs"]["conditioning"]
        if name.endswith("_flux_kontext_dev"):
            target = source_of(api, target, "ReferenceLatent")["inputs"]["conditioning"]
        assert source_of(api, target, "AttentionEditRegionPrompt") is region and target[1] == 1, name
        [save] = [n for n in api.values() if n["class_type"] == "SaveImage"]
        paste = source_of(api, save["inputs"]["images"], "AttentionEditPasteOutsideMask")
        assert paste["inputs"]["mask"] == drawn and (paste["inputs"]["grow"], paste["inputs"]["feather"]) == (0, 1)


def test_flux_dev_workflows_invert_at_guidance_1_and_edit_at_2_without_cfg(built):
    """FLUX.1-dev (Kontext, FLUX.2) is guidance-distilled: FluxGuidance 1 on the inversion's (and the aux branch's)
    conditioning, 2 on the target's (ProEdit, RF-Solver-Edit), cfg 1."""
    flux = {name: api for name, (api, _) in built.items() if name.endswith(GUIDANCE_DISTILLED)
            and not any(n["class_type"] == "AttentionEditFlowEdit" for n in api.values())}
    assert len(flux) == 21
    for name, api in flux.items():
        [invert] = [n for n in api.values() if n["class_type"] == "AttentionEditInvert"]
        [edit] = [n for n in api.values() if n["class_type"] in ("AttentionEditSampler", "AttentionEditGuider")]
        assert edit["inputs"]["target_cfg"] == 1.0 and invert["inputs"]["cfg"] == 1.0, name
        assert source_of(api, invert["inputs"]["positive"], "FluxGuidance")["inputs"]["guidance"] == 1.0, name
        assert source_of(api, edit["inputs"]["target_positive"], "FluxGuidance")["inputs"]["guidance"] == 2.0, name
        if "aux_positive" in edit["inputs"]:
            assert source_of(api, edit["inputs"]["aux_positive"], "FluxGuidance")["inputs"]["guidance"] == 1.0, name


def test_kontext_workflows_give_every_branch_the_source_image_as_reference(built):
    """FLUX.1 Kontext: ReferenceLatent with the source latent on every prompt (the branches run in one model call,
    so they share it); the image is scaled to Kontext's sizes first, as ComfyUI's Kontext template does."""
    kontext = {name: api for name, (api, _) in built.items() if name.endswith("_flux_kontext_dev")}
    assert len(kontext) == 11
    for name, api in kontext.items():
        refs = [n for n in api.values() if n["class_type"] == "ReferenceLatent"]
        assert len(refs) == 3, name
        for ref in refs:
            encode = source_of(api, ref["inputs"]["latent"], "VAEEncode")
            source_of(api, encode["inputs"]["pixels"], "FluxKontextImageScale")
