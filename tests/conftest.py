"""Session fixtures: the real ComfyUI, booted once on the CPU, with the pack and the test-only nodes loaded."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import runtime  # noqa: E402


@pytest.fixture(scope="session")
def comfy():
    """Boots ComfyUI and loads the pack + tests/fixture_nodes through ComfyUI's own loader."""
    import torch
    torch.set_num_threads(2)
    runtime.boot()
    import nodes
    if "TinyTestModel" not in nodes.NODE_CLASS_MAPPINGS:
        runtime._state["loop"].run_until_complete(nodes.load_custom_node(str(ROOT / "tests" / "fixture_nodes")))
    return runtime


@pytest.fixture(scope="session")
def pack(comfy):
    """Import a pack submodule as ComfyUI loaded it: pack('attention.hooks')."""
    return comfy.pack_module


@pytest.fixture(scope="session")
def fixtures(comfy):
    """The test-only module with tiny_model(kind) and tiny_conditioning(text)."""
    import nodes
    return sys.modules[nodes.NODE_CLASS_MAPPINGS["TinyTestModel"].__module__]


def with_sinks(prompt):
    """Adds a TestSink on output 0 of every node whose outputs nothing consumes (ComfyUI runs output nodes only)."""
    import nodes
    used = {v[0] for node in prompt.values() for v in node["inputs"].values() if isinstance(v, list)}
    prompt = dict(prompt)
    for node_id in [n for n in prompt if n not in used]:
        cls = nodes.NODE_CLASS_MAPPINGS[prompt[node_id]["class_type"]]
        if not getattr(cls, "OUTPUT_NODE", False):
            prompt[f"sink_{node_id}"] = {"class_type": "TestSink", "inputs": {"value": [node_id, 0]}}
    return prompt


@pytest.fixture
def run(comfy):
    """Validate and execute an API-format prompt (sinks added); returns {node_id: outputs}."""
    return lambda prompt: comfy.run_prompt(with_sinks(prompt))
