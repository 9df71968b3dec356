"""The embedded default with stock nodes: LoadEmbeddedEditModel -> CLIPTextEncode -> KSampler -> VAEDecode."""
import pytest
import torch


@pytest.mark.parametrize("denoiser", ["unet", "flux"])
def test_embedded_model_generates_an_image_with_stock_nodes(run, denoiser):
    prompt = {
        "1": {"class_type": "LoadEmbeddedEditModel", "inputs": {"denoiser": denoiser}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
            "steps": 12, "cfg": 4.0 if denoiser == "unet" else 3.0, "sampler_name": "euler",
            "scheduler": "normal" if denoiser == "unet" else "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }
    image = run(prompt)["6"][0]
    assert image.shape == (1, 64, 64, 3) and image.isfinite().all()
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05  # a picture, not a flat field


def test_embedded_clip_gives_minilm_token_states(run):
    prompt = {
        "1": {"class_type": "LoadEmbeddedEditModel", "inputs": {"denoiser": "unet"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": ["1", 1]}},
    }
    cond = run(prompt)["2"][0]
    tokens, options = cond[0]
    assert tokens.ndim == 3 and tokens.shape[0] == 1 and tokens.shape[2] == 384
    assert options["pooled_output"].shape == (1, 384)
    assert not torch.equal(tokens[0, 1], tokens[0, 2])
