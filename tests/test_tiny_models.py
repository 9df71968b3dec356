"""The tiny fixture models are real ComfyUI models: they sample end to end with KSampler through the executor."""
import pytest

KINDS = ["sd15", "sd15_v", "sdxl", "flux", "flux2", "flux_kontext", "chroma"]


@pytest.mark.parametrize("kind", KINDS)
def test_ksampler_graph_runs_on_tiny_model(run, kind):
    prompt = {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": "a red circle", "kind": kind}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": "", "kind": kind}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 1, "steps": 3, "cfg": 3.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }
    out = run(prompt)
    samples = out["5"][0]["samples"]
    assert samples.shape == (1, 4, 16, 16)
    assert samples.isfinite().all() and samples.abs().sum() > 0
