"""The Edit Sampler chains a sampler_cfg_function already on the MODEL (ComfyUI's RescaleCFG node) per branch instead
of replacing it: each branch equals ComfyUI's own SamplerCustom (euler from the inverted noise, that branch's prompt
and cfg) on the same MODEL, with RescaleCFG before or after a pack node, and as before without RescaleCFG."""
import pytest
import torch
from graphs import tiny_inputs

STEPS, TARGET_CFG, SOURCE_CFG = 4, 4.0, 2.5
TOL = 1e-3  # batch-size rounding: the edit batches both branches, the reference samples one
ORDERS = {  # model chain -> the node whose MODEL the edit uses
    "rescale_then_pack": {"r": ("RescaleCFG", "1"), "p": ("AttentionEditUniformAttnPatch", "r")},
    "pack_then_rescale": {"p": ("AttentionEditUniformAttnPatch", "1"), "r": ("RescaleCFG", "p")},
    "without": {"p": ("AttentionEditUniformAttnPatch", "1")},
}
LAST = {"rescale_then_pack": "p", "pack_then_rescale": "r", "without": "p"}


def model_node(class_type, parent):
    if class_type == "RescaleCFG":
        return {"class_type": "RescaleCFG", "inputs": {"model": [parent, 0], "multiplier": 0.7}}
    # UAM on the aux branch only: no aux branch here, so it leaves the source and target rows alone
    return {"class_type": class_type, "inputs": {"model": [parent, 0], "branches": "aux", "during_inversion": False}}


def edit_and_reference(name, kind):
    """Invert + Edit Sampler on one chain, and ComfyUI's SamplerCustom per branch on the same chain's MODEL."""
    prompt = {}
    for node, (class_type, parent) in ORDERS[name].items():
        prompt[f"{name}{node}"] = model_node(class_type, parent if parent == "1" else f"{name}{parent}")
    model = [f"{name}{LAST[name]}", 0]
    prompt[f"{name}inv"] = {"class_type": "AttentionEditInvert", "inputs": {
        "model": model, "latent": ["5", 0], "positive": ["2", 0], "steps": STEPS, "scheduler": "simple",
        "solver": "auto", "cfg": 1.0}}
    prompt[f"{name}edit"] = {"class_type": "AttentionEditSampler", "inputs": {
        "model": model, "inversion": [f"{name}inv", 0], "target_positive": ["3", 0], "target_cfg": TARGET_CFG,
        "source_mode": "reconstruct", "source_cfg": SOURCE_CFG, "start_step": 0, "negative": ["4", 0]}}
    prompt[f"{name}sigmas"] = {"class_type": "BasicScheduler", "inputs": {
        "model": model, "scheduler": "simple", "steps": STEPS, "denoise": 1.0}}
    for branch, positive, cfg in (("target", "3", TARGET_CFG), ("source", "2", SOURCE_CFG)):
        prompt[f"{name}ref_{branch}"] = {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": False, "noise_seed": 0, "cfg": cfg, "positive": [positive, 0],
            "negative": ["4", 0], "sampler": ["euler", 0], "sigmas": [f"{name}sigmas", 0],
            "latent_image": [f"{name}inv", 1]}}
    return prompt


@pytest.fixture(scope="module", params=["sd15", "sd15_v"])
def outputs(request, comfy):
    from conftest import with_sinks
    prompt = {**tiny_inputs(request.param), "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}}
    for name in ORDERS:
        prompt.update(edit_and_reference(name, request.param))
    out = comfy.run_prompt(with_sinks(prompt))
    return {name: {"edited": out[f"{name}edit"][0]["samples"], "source": out[f"{name}edit"][1]["samples"],
                   "ref_target": out[f"{name}ref_target"][0]["samples"],
                   "ref_source": out[f"{name}ref_source"][0]["samples"]} for name in ORDERS}


@pytest.mark.parametrize("name", list(ORDERS))
def test_each_branch_equals_comfyuis_sampler_with_its_own_cfg(outputs, name):
    o = outputs[name]
    torch.testing.assert_close(o["edited"], o["ref_target"], rtol=0, atol=TOL)
    torch.testing.assert_close(o["source"], o["ref_source"], rtol=0, atol=TOL)


def test_rescale_cfg_acts_in_either_node_order(outputs):
    before, after, without = outputs["rescale_then_pack"], outputs["pack_then_rescale"], outputs["without"]
    for key in ("edited", "source"):
        assert torch.equal(before[key], after[key])
        assert (before[key] - without[key]).abs().max() > 100 * TOL, key  # far outside the comparison tolerance
