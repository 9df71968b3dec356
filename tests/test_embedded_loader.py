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


@pytest.mark.parametrize("denoiser", ["unet", "flux"])
def test_embedded_models_have_latent_previews(pack, denoiser):
    """ComfyUI's Latent2RGB previewer on an embedded model's latent (the model's scaled space, as samplers hand it
    over) shows the image: every 8x8 cell's colour within 0.2 on average, correlated with the truth."""
    import sys
    import numpy as np
    import latent_preview
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from embedded import dataset
    loader = pack("embedded.loader")
    model, vae = loader.load_model(denoiser), loader.load_vae()
    fmt = model.model.latent_format
    images = torch.from_numpy(dataset.make_dataset(8, seed=123)[0]).float() / 255.0
    with torch.no_grad():
        x0 = fmt.process_in(vae.encode(images).float())
    previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
    truth = torch.nn.functional.avg_pool2d(images.movedim(-1, 1), 8).movedim(1, -1)
    shown = torch.stack([torch.from_numpy(np.array(previewer.decode_latent_to_preview(x[None])))[..., :3]
                         for x in x0]).float() / 255.0
    assert shown.shape == truth.shape
    assert (shown - truth).abs().mean() < 0.2
    assert torch.corrcoef(torch.stack([shown.flatten(), truth.flatten()]))[0, 1] > 0.6
