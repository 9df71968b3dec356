"""The pack inside a real ComfyUI server: main.py on 127.0.0.1, nodes listed, prompts over HTTP, clean shutdown."""
import io
from pathlib import Path

import pytest

from harness.server import ComfyServer, ServerError, pack_folder_name

FIXTURE_NODES = Path(__file__).resolve().parent / "fixture_nodes"


@pytest.fixture(scope="module")
def server():
    with ComfyServer(extra_nodes=[FIXTURE_NODES], threads=1) as s:
        yield s


def sampling_prompt():
    """Tiny SD1.5 -> KSampler -> SaveLatent, plus EmptyImage -> SaveImage (a real PNG without a VAE)."""
    return {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a red circle"}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 1, "steps": 3, "cfg": 3.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "latents/server_test"}},
        "7": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0xFF0000}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "server_test"}},
    }


def test_server_is_loopback_and_loads_pack_without_import_error(server):
    assert server.url.startswith("http://127.0.0.1:")
    info = server.object_info()
    for name in ("TinyTestModel", "TinyTestConditioning", "TestSink", "KSampler"):
        assert name in info
    log = server.log()
    folder = pack_folder_name()
    pack_lines = [line for line in log.splitlines() if f"custom_nodes/{folder}" in line]
    assert any("seconds" in line for line in pack_lines), f"pack not loaded; log tail:\n{server.log_tail()}"
    bad = [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, "\n".join(bad)


def test_every_pack_node_is_listed(comfy, server):
    """/object_info lists exactly the pack's NODE_CLASS_MAPPINGS under the pack's module."""
    expected = set(comfy.boot().NODE_CLASS_MAPPINGS)
    info = server.object_info()
    assert expected <= set(info), f"missing from /object_info: {sorted(expected - set(info))}"
    module = f"custom_nodes.{pack_folder_name()}"
    assert {name for name, node in info.items() if node.get("python_module") == module} == expected


def test_prompt_runs_and_results_download(server):
    from PIL import Image
    from safetensors.torch import load

    entry = server.run(sampling_prompt(), timeout=90)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    assert {"6", "8"} <= set(entry["outputs"])
    latents = server.output_files(entry, "latents")
    images = server.output_files(entry, "images")
    assert [n for n, _ in latents] == ["6"] and [n for n, _ in images] == ["8"]
    samples = load(server.view(latents[0][1]))["latent_tensor"]
    assert samples.shape == (1, 4, 16, 16) and samples.isfinite().all() and samples.abs().sum() > 0
    image = Image.open(io.BytesIO(server.view(images[0][1])))
    assert image.format == "PNG" and image.size == (24, 16)
    assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_pack_nodes_run_over_http(server):
    """UAM patch -> Invert -> Edit Sampler (source, target and aux branches) -> SaveLatent, through /prompt."""
    prompt = {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a red circle"}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": "a blue circle"}},
        "4": {"class_type": "TinyTestConditioning", "inputs": {"text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 2, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "AttentionEditUniformAttnPatch",
              "inputs": {"model": ["1", 0], "branches": "aux", "during_inversion": True}},
        "8": {"class_type": "AttentionEditInvert", "inputs": {"model": ["7", 0], "latent": ["6", 0],
                                                              "positive": ["4", 0], "steps": 3,
                                                              "scheduler": "simple", "solver": "auto", "cfg": 1.0}},
        "9": {"class_type": "AttentionEditSampler", "inputs": {
            "model": ["7", 0], "inversion": ["8", 0], "target_positive": ["3", 0], "target_cfg": 1.0,
            "source_mode": "replay", "source_cfg": 1.0, "start_step": 0, "aux_positive": ["4", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "edited"}},
    }
    entry = server.run(prompt, timeout=90)
    assert entry["status"]["status_str"] == "success"
    [(node_id, file)] = server.output_files(entry, "latents")
    from safetensors.torch import load
    edited = load(server.view(file))["latent_tensor"]
    assert node_id == "10" and edited.shape == (1, 4, 16, 16) and edited.isfinite().all()


def test_broken_prompts_get_400_with_comfy_error_json(server):
    status, body = server.request("POST", "/prompt", {"prompt": {
        "1": {"class_type": "NoSuchNodeAnywhere", "inputs": {}}}})
    assert status == 400
    assert body["error"]["type"] == "invalid_prompt" and "NoSuchNodeAnywhere" in body["error"]["message"]
    assert "node_errors" in body

    broken = sampling_prompt()
    broken["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(ServerError) as err:  # 200: the image branch is still valid, but strict mode refuses
        server.queue(broken)
    assert list(err.value.details["node_errors"]) == ["5"]
    for node_id in ("7", "8"):
        del broken[node_id]
    status, body = server.request("POST", "/prompt", {"prompt": broken})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    node_errors = body["node_errors"]
    assert list(node_errors) == ["5"] and node_errors["5"]["errors"][0]["type"] == "value_not_in_list"


def test_stop_ends_the_process_and_removes_the_base_directory(server):
    proc, base = server.process, server.base
    server.stop()
    assert proc.poll() is not None and server.process is None
    assert not base.exists()
    server.stop()  # idempotent


def test_failed_start_raises_with_log_tail_and_leaves_nothing_behind():
    server = ComfyServer(extra_args=["--no-such-option"], startup_timeout=60)
    with pytest.raises(ServerError, match="no-such-option"):
        server.start()
    assert server.process is None and server.base is None
    assert "no-such-option" in server.log()
