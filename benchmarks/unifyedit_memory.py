"""Computed peak memory of one UnifyEdit optimisation step on SDXL at 1024 px (128x128 latent), float16.

Not a guess and not a GPU measurement: the real SDXL U-Net (ComfyUI's classes, embedded/architectures.py
sdxl_unet_config) is built on the meta device and the optimiser's own passes run on it through the pack's code
(grad_ready, the attention record, its checkpointing and early stop): a no-grad pass of the source's cond row
(the source maps the step keeps), then the target's cond row with gradients and both losses. Every tensor
autograd saves for backward is counted (saved_tensors_hooks, each tensor once, weights excluded: they are the
model's own). Attention outside the recorded layers runs as a memory-efficient GPU kernel would (it keeps q, k,
v, the output and a float32 log-sum-exp per row, never L x L). Peak = weights + saved tensors + source maps +
the largest backward transient (the recomputed per-head probabilities of one checkpointed layer, their gradient
and the logits' gradient, plus two activation-sized gradient buffers).

    .venv/bin/python benchmarks/unifyedit_memory.py [--size 128] [--layers 1/4]
"""
import argparse

from overhead_common import ROOT  # noqa: F401  (sets the import paths)

GIB = 2 ** 30


def _efficient_attention():
    """optimized_attention_override: the saved-tensor footprint of a memory-efficient kernel (q, k, v, out, lse)."""
    import torch

    class Efficient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

    def override(func, q, k, v, heads, *args, skip_reshape=False, skip_output_reshape=False, **kwargs):
        if not skip_reshape:
            q, k, v = (t.view(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        out = Efficient.apply(q, k, v)
        return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])
    return override


class SavedBytes:
    """saved_tensors_hooks pack hook: bytes of the distinct non-parameter tensors autograd keeps."""

    def __init__(self, params):
        self.params, self.kept, self.largest = params, {}, 0

    def __call__(self, t):
        base = t._base if t._base is not None else t
        if id(base) not in self.params and id(base) not in self.kept:
            self.kept[id(base)] = base
            self.largest = max(self.largest, base.numel() * base.element_size())
        return t

    @property
    def total(self):
        return sum(t.numel() * t.element_size() for t in self.kept.values())


def estimate(size=128, layers="1/4", checkpoint="auto"):
    """{weights, saved, source_maps, transient, peak} in bytes for one optimisation iteration."""
    import torch
    import comfy.model_base
    import comfy.model_patcher
    from embedded.architectures import SmallModelConfig, sdxl_unet_config
    from harness import runtime
    record_mod = runtime.pack_module("attention.attention_record")
    ue = runtime.pack_module("latent_ops.unifyedit")
    hooks = runtime.pack_module("attention.hooks")
    run_state = runtime.pack_module("attention.run_state")
    controller = runtime.pack_module("attention.controller")
    layer_shapes = runtime.pack_module("attention.layer_shapes")
    meta = torch.device("meta")
    base = comfy.model_base.SDXL(SmallModelConfig(sdxl_unet_config(torch.float16)), device=meta)
    model = comfy.model_patcher.ModelPatcher(base, load_device=meta, offload_device=meta)
    scales = record_mod.SCALES[layers]
    record = record_mod.AttentionRecord((2, 3), scales, scales, checkpoint=checkpoint)
    patched = hooks.with_controller(ue.grad_ready(model), record)
    dm = base.diffusion_model
    params = {id(p) for p in dm.parameters()}
    weights = sum(p.numel() * p.element_size() for p in dm.parameters())
    x = torch.empty(1, 4, size, size, device=meta, dtype=torch.float16)
    context = torch.empty(1, 77, 2048, device=meta, dtype=torch.float16)
    y = torch.empty(1, 2816, device=meta, dtype=torch.float16)
    t = torch.empty(1, device=meta)

    def forward(role, latent, expect):
        run = run_state.RunState(branches=(role,), per_branch=1, phase="edit", latent_hw=(size, size))
        run.step = 0
        rec = record_mod.new_record(role, expect)
        run.store[record_mod.RECORD_KEY] = rec
        options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0])
        options[controller.RUN_KEY] = run
        options["optimized_attention_override"] = _efficient_attention()
        try:
            dm(latent, t, context=context, y=y, transformer_options=options)
        except record_mod.StopForward:
            pass
        return rec

    with torch.no_grad():
        source = forward("source", x, None)
    with torch.enable_grad():
        saved = SavedBytes(params)
        with torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t):
            z = x.detach().requires_grad_(True)
            rec = forward("target", z, frozenset(source["seen"]))
            sa = {k: (source["sa"][k][0], a, g) for k, (a, g) in rec["sa"].items()}
            mask = torch.ones(1, size, size, device=meta)
            ue.sap_loss(sa), ue.caa_loss(rec["ca"], mask)
    source_maps = sum(a.numel() * a.element_size() for a, _ in source["sa"].values())
    shapes = layer_shapes.self_attention_shapes(model, (size, size))  # {layer: (tokens, channels)}
    per_head = max((shapes[k][0] ** 2 * (shapes[k][1] // dm.num_head_channels) * record.dtype.itemsize
                    for k in rec["sa"]), default=0)
    transient = 3 * per_head + 2 * saved.largest
    return {"weights": weights, "saved": saved.total, "source_maps": source_maps, "transient": transient,
            "peak": weights + saved.total + source_maps + transient, "sa_layers": len(rec["sa"]),
            "ca_layers": len(rec["ca"]), "checkpoint": checkpoint}


def report(size=128, layers="1/4", budget_gib=24.0):
    """Printed lines of the estimate with and without checkpointing."""
    lines = []
    for ckpt in ("auto", False):
        e = estimate(size, layers, ckpt)
        fits = e["peak"] / GIB <= budget_gib
        lines.append(f"SDXL {size * 8}px fp16, layers {layers}, checkpoint {str(ckpt):<5}: weights "
                     f"{e['weights'] / GIB:.2f} + saved activations {e['saved'] / GIB:.2f} + source maps "
                     f"{e['source_maps'] / GIB:.2f} + backward transient {e['transient'] / GIB:.2f} = peak "
                     f"{e['peak'] / GIB:.2f} GiB ({e['sa_layers']} SA / {e['ca_layers']} CA layers): "
                     f"{'fits' if fits else 'does not fit'} {budget_gib:.0f} GB")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--layers", default="1/4")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from harness import runtime
    runtime.boot(cpu=True)
    for line in report(args.size, args.layers):
        print(line)


if __name__ == "__main__":
    main()
