"""Shared pieces of the test graphs (API format)."""


def tiny_inputs(kind, source="a red circle", target="a blue circle"):
    """Nodes 1-5: a tiny model, source / target / empty conditionings and a 16x16 latent."""
    return {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": source}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": target}},
        "4": {"class_type": "TinyTestConditioning", "inputs": {"text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
    }
