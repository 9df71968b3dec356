"""The training scripts run end to end (a few steps each) and write weights the pack's loader and stock VAE read.

They run as `python -m embedded.<script>` subprocesses, the way embedded/train_all.py runs them; quality is checked
by embedded/quality_gates.py, not here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent


def run_script(module, *args):
    r = subprocess.run([sys.executable, "-m", module, *args, "--threads", "1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_autoencoder_script_writes_a_vae_comfy_loads(comfy, pack, tmp_path):
    out = tmp_path / "ae.safetensors"
    log = run_script("embedded.train_autoencoder", "--crop-steps", "2", "--full-steps", "2", "--n-train", "32",
                     "--out", str(out))
    assert "saved" in log
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == "taesd" and {"vae_scale", "vae_shift"} <= set(f.keys())
    vae = pack("embedded.loader").load_vae(str(out))  # stock comfy.sd.VAE, as VAELoader builds it
    latent = vae.encode(torch.rand(2, 64, 64, 3))
    image = vae.decode(latent)
    assert latent.shape == (2, 4, 8, 8) and image.shape == (2, 64, 64, 3)
    assert latent.isfinite().all() and 0 <= image.min() and image.max() <= 1


@pytest.mark.parametrize("kind", ["unet", "flux"])
def test_denoiser_script_writes_weights_the_loader_builds(comfy, pack, tmp_path, kind):
    out = tmp_path / f"{kind}.safetensors"
    extra = ["--uniform-frac", "0.5"] if kind == "flux" else []
    run_script("embedded.train_denoiser", "--model", kind, "--steps", "3", "--batch", "4", "--n-data", "64",
               "--seed", "5", "--out", str(out), *extra)
    loader = pack("embedded.loader")
    spec = loader.read_metadata(str(out))
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["steps"] == "3" and f.metadata()["seed"] == "5"
    assert spec["kind"] == kind and spec["sampler"]["steps"] > 0
    model = loader.load_model(kind, path=str(out)).model
    x = torch.randn(1, 4, 8, 8)
    cond = torch.randn(1, 32, 384)
    kwargs = {"y": torch.randn(1, 384)} if kind == "flux" else {}
    den = model.apply_model(x, torch.tensor([0.5]), c_crossattn=cond, **kwargs)
    assert den.shape == x.shape and den.isfinite().all()


def test_domain_clip_and_region_predictor_scripts_write_weights(comfy, pack, tmp_path):
    clip_out, pred_out = tmp_path / "clip.safetensors", tmp_path / "region.safetensors"
    run_script("embedded.train_domain_clip", "--steps", "2", "--batch", "8", "--n-data", "32", "--out", str(clip_out))
    run_script("embedded.train_region_predictor", "--max-steps", "2", "--batch", "4", "--n-data", "16",
               "--clip", str(clip_out), "--out", str(pred_out))
    with safe_open(str(pred_out), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    assert info["steps"] == 2 and info["clip"] == "clip.safetensors"
    image_features = pack("embedded.domain_clip").load(str(clip_out)).encode_image(torch.rand(2, 64, 64, 3))
    assert image_features.shape[0] == 2 and image_features.isfinite().all()
