"""Shared pieces of the test graphs (API format)."""


def tiny_inputs(kind, source="a red circle", target="a blue circle"):
    """Nodes 1-5: a tiny model, source / target / empty conditionings (with the kind's reference latent, if any)
    and a 16x16 latent."""
    return {
        "1": {"class_type": "TinyTestModel", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "TinyTestConditioning", "inputs": {"text": source, "kind": kind}},
        "3": {"class_type": "TinyTestConditioning", "inputs": {"text": target, "kind": kind}},
        "4": {"class_type": "TinyTestConditioning", "inputs": {"text": "", "kind": kind}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
    }
