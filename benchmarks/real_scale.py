"""Benchmark (not a test): Invert + Edit Sampler for every technique at real model scale, random weights.

Models, built from ComfyUI's own classes directly on the device in their dtype (nothing allocated on the CPU when a
GPU exists): SD1.5 U-Net (fp16, 64x64 latent = 512 px), SDXL base U-Net (fp16, 128x128 = 1024 px), FLUX.1-dev-size
MMDiT (bf16, 16x128x128 = 1024 px; 19 double + 38 single blocks). Per model: one inversion (Invert node, 8 steps),
then the Edit Sampler for each variant: technique_overhead.py's (plain, kvmix, kvmix_cache, aux_only, uam_blend,
cpam, masactrl) and the example workflows' pipelines (proedit: KV-Mix + Latents-Shift; unifyedit on U-Nets).

Columns: ok (or the error), finite outputs, edit ms per step, ratio to the unpatched run with the same branches
(plain or aux_only), peak extra GPU memory of the edit (torch.cuda peak above what was allocated before it),
the inversion's seconds, and `24 GB`: whether weights + peak extra fit a 24 GB card (CPU: weights only, marked *).
A time budget (--budget) skips what is left once spent, so the table is always printed.

    .venv/bin/python benchmarks/real_scale.py                 # GPU: sd15 sdxl flux, real size
    .venv/bin/python benchmarks/real_scale.py --tiny          # the same code path, tiny configs, CPU (< 1 min;
                                                              # float32, --dtype model for fp16/bf16)
    .venv/bin/python benchmarks/real_scale.py --models flux --repeats 3 --budget 1200 --json /tmp/real.json
"""
import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import overhead_common  # noqa: F401  (sets the import paths)
import technique_overhead

STEPS = 8
GIB = 2 ** 30
CARD = 24 * 10 ** 9  # a "24 GB" card


@dataclass
class Spec:
    label: str
    latent: tuple      # (channels, side) of the latent
    context: tuple     # (tokens, dim) of the text conditioning
    pooled: int = 0    # pooled-output size (0: none)
    cfg: float = 7.5
    guidance: float = None
    scale: str = "1/4"  # UnifyEdit's attention layers


def specs(tiny):
    """{kind: Spec} of the real models, or of the tiny test models (tests/fixture_nodes) with --tiny."""
    if tiny:
        return {"sd15": Spec("tiny sd15", (4, 16), (8, 32), scale="1/2"),
                "sdxl": Spec("tiny sdxl", (4, 16), (8, 32), 32, scale="1/2"),
                "flux": Spec("tiny flux", (4, 16), (8, 32), 32, cfg=1.0, guidance=3.5)}
    return {"sd15": Spec("SD1.5 fp16 512px", (4, 64), (77, 768)),
            "sdxl": Spec("SDXL fp16 1024px", (4, 128), (77, 2048), 1280),
            "flux": Spec("FLUX.1-dev bf16 1024px", (16, 128), (512, 4096), 768, cfg=1.0, guidance=3.5)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the tests run this)")
    p.add_argument("--models", nargs="+", choices=("sd15", "sdxl", "flux"), default=["sd15", "sdxl", "flux"])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--warmup", type=int, help="untimed edits per variant first (default: 1, --tiny 0)")
    p.add_argument("--repeats", type=int, default=1, help="timed edits per variant (median)")
    p.add_argument("--budget", type=float, help="seconds; variants left after it are skipped (default 1800, "
                                                "--tiny 50)")
    p.add_argument("--dtype", choices=("auto", "model", "float32"), default="auto",
                   help="model: fp16 U-Nets, bf16 FLUX (works on the CPU too, about 7x slower there); "
                        "auto: model, float32 with --tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    args.warmup = (0 if args.tiny else 1) if args.warmup is None else args.warmup
    args.budget = (50.0 if args.tiny else 1800.0) if args.budget is None else args.budget
    args.float32 = args.dtype == "float32" or (args.dtype == "auto" and args.tiny)
    return args


def build(kind, tiny, device, dtype, seed=0):
    """A random-weight ModelPatcher of a stock ComfyUI model class, its parameters created on `device` in
    `dtype` (real sizes would not fit the CPU path) and initialised there."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    from attention_overhead import init_on_device_, load_fixtures
    from embedded import architectures as arch
    real = {"sd15": arch.sd15_unet_config, "sdxl": arch.sdxl_unet_config, "flux": arch.flux_dev_config}
    config = dict(load_fixtures().tiny_config(kind) if tiny else real[kind](), dtype=dtype)
    if kind == "flux":
        model_config = arch.SmallModelConfig(config, sampling_settings={"shift": 1.0})
        model_config.latent_format.latent_channels = config["in_channels"]
        model = comfy.model_base.Flux(model_config, device=device)
    else:
        cls = comfy.model_base.SDXL if kind == "sdxl" else comfy.model_base.BaseModel
        model = cls(arch.SmallModelConfig(config), device=device)
    init_on_device_(model.diffusion_model, seed)
    offload = device if device.type == "cuda" else comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=offload)


def conditioning(spec, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, spec.pooled, generator=g)} if spec.pooled else {}
    if spec.guidance is not None:
        extra["guidance"] = spec.guidance
    return [[torch.randn(1, *spec.context, generator=g), extra]]


def workload(kind, spec, tiny, device, float32=False):
    import torch
    dtype = torch.float32 if float32 else (torch.bfloat16 if kind == "flux" else torch.float16)
    channels, side = spec.latent
    mask = torch.zeros(1, side, side)
    mask[:, side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1.0
    model = build(kind, tiny, device, dtype)
    return dict(model=model, latent=torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(0)),
                src=conditioning(spec, 1), tgt=conditioning(spec, 2), neg=conditioning(spec, 3), cfg=spec.cfg,
                mask=mask, weights=sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()))


def pipelines(runtime, work, spec, steps, kind):
    """{name: Variant}: technique_overhead's variants, ProEdit's pipeline (KV-Mix + Latents-Shift), Region Prompt
    (its defaults, words at token positions 2-3) and, on a U-Net, UnifyEdit with the example workflow's settings
    (token indices instead of words: there is no tokenizer)."""
    chosen = technique_overhead.variants(runtime, work["model"], work["mask"], steps)
    chosen["proedit"] = technique_overhead.Variant(chosen["kvmix"].model, shift=True)
    region = runtime.pack_module("attention.region_prompt").RegionPrompt(work["mask"], [2, 3])  # the node defaults
    chosen["region_prompt"] = technique_overhead.Variant(
        runtime.pack_module("attention.hooks").with_controller(work["model"], region))
    if kind != "flux":
        import unifyedit_sweep
        s = dict(unifyedit_sweep.settings({}), edit_tokens="#2, #3", target_prompt="", sa_layers=spec.scale,
                 ca_layers=spec.scale)
        node = runtime.pack_module("nodes.unifyedit").SAPreserveOptimizer()
        chosen["unifyedit"] = technique_overhead.Variant(node.patch(work["model"], **s)[0])
    return chosen


class Device:
    """Synchronisation and peak-memory readings on the benchmark's device (no-ops on the CPU)."""

    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self):
        """Reset the peak; returns the bytes allocated now."""
        if not self.cuda:
            return 0
        self.sync()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak_extra(self, base):
        return self.torch.cuda.max_memory_allocated() - base if self.cuda else None


def invert(runtime, work, model, steps, dev, cache):
    """(seconds, inversion) of the Invert node as the workflows use it (cache_kv for the cache variants)."""
    node = runtime.pack_module("nodes.invert").Invert()
    dev.sync()
    start = time.perf_counter()
    inv = node.run(model, {"samples": work["latent"]}, work["src"], steps, "simple", "auto", 1.0, cache_kv=cache)[0]
    dev.sync()
    return time.perf_counter() - start, inv


def edit_once(runtime, work, variant, inv, dev):
    """(seconds, peak extra bytes, all outputs finite) of one Edit Sampler run."""
    from overhead_common import timed_edit
    if variant.shift:
        inv = runtime.pack_module("nodes.proedit").LatentsShift().shift(inv, work["mask"], 0.25, 0)[0]
    base = dev.start()
    seconds, out = timed_edit(runtime, variant.model, inv, technique_overhead.branches(runtime, work, variant.aux),
                              work["neg"], dev.sync)
    finite = all(bool(dev.torch.isfinite(x).all()) for x in out.values())
    return seconds, dev.peak_extra(base), finite


def measure_model(runtime, kind, spec, args, device, dev, deadline, rows):
    """Appends one row per variant of `kind` to rows (errors and skips included)."""
    import comfy.model_management
    import torch

    def row(name, **values):
        rows.append({**dict(model=spec.label, variant=name, ok="skipped: time budget", finite=None,
                            ms_per_step=None, ratio_base=None, peak_extra=None, invert_s=None, weights=None),
                     **values})
    names = list(technique_overhead.VARIANTS) + ["proedit", "region_prompt"]
    names += ["unifyedit"] if kind != "flux" else []
    if time.perf_counter() > deadline:
        for name in names:
            row(name)
        return
    try:
        work = workload(kind, spec, args.tiny, device, args.float32)  # outside inference mode, like a loaded checkpoint
        chosen = pipelines(runtime, work, spec, args.steps, kind)
        with torch.inference_mode():
            inverted = {False: invert(runtime, work, work["model"], args.steps, dev, False)}
    except Exception as e:  # noqa: BLE001 (the table reports it)
        for name in names:
            row(name, ok=f"error: {type(e).__name__}: {e}"[:160])
        return
    done = {}
    for name in names:
        if time.perf_counter() > deadline:
            row(name)
            continue
        v = chosen[name]
        try:
            with torch.inference_mode():
                if v.kv_cache and True not in inverted:
                    inverted[True] = invert(runtime, work, v.model, args.steps, dev, True)
                inv_s, inv = inverted[v.kv_cache]
                for _ in range(args.warmup):
                    edit_once(runtime, work, v, inv, dev)
                runs = [edit_once(runtime, work, v, inv, dev) for _ in range(max(args.repeats, 1))]
        except Exception as e:  # noqa: BLE001
            row(name, ok=f"error: {type(e).__name__}: {e}"[:160], weights=work["weights"])
            if dev.cuda:
                torch.cuda.empty_cache()
            continue
        ms = 1000 * statistics.median(r[0] for r in runs) / args.steps
        done[name] = ms
        base = v.base if v.patched else None
        peaks = [r[1] for r in runs if r[1] is not None]
        row(name, ok="ok", finite=all(r[2] for r in runs), ms_per_step=ms,
            ratio_base=ms / done[base] if base in done else None, peak_extra=max(peaks) if peaks else None,
            invert_s=inv_s, weights=work["weights"])
    del work, chosen, inverted
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def fits(r):
    """'yes'/'no' for weights + peak extra within a 24 GB card; '*' when no peak was measured (CPU)."""
    if r["weights"] is None:
        return "-"
    need = r["weights"] + (r["peak_extra"] or 0)
    return ("yes" if need <= CARD else "no") + ("" if r["peak_extra"] is not None else "*")


HEADER = (f"{'model':<24} {'variant':<12} {'ok':<6} {'finite':>6} {'ms/step':>9} {'x base':>6} {'peak GiB':>8} "
          f"{'invert s':>8} {'24 GB':>5}")


def format_row(r):
    def num(value, fmt):
        return format(value, fmt) if value is not None else "-"
    ok = r["ok"] == "ok"
    peak = None if r["peak_extra"] is None else r["peak_extra"] / GIB
    return (f"{r['model']:<24} {r['variant']:<12} {'ok' if ok else '-':<6} {num(r['finite'], ''):>6} "
            f"{num(r['ms_per_step'], '.1f'):>9} {num(r['ratio_base'], '.2f'):>6} {num(peak, '.2f'):>8} "
            f"{num(r['invert_s'], '.2f'):>8} {fits(r):>5}" + ("" if ok else f"  {r['ok']}"))


def main(argv=None):
    args = parse_args(argv)
    import torch
    deadline = time.perf_counter() + args.budget
    torch.set_num_threads(args.threads)
    from harness import runtime
    import logging
    runtime.boot(cpu=args.tiny or not torch.cuda.is_available())
    logging.getLogger().setLevel(logging.ERROR)
    import comfy.model_management
    device = torch.device("cpu") if args.tiny else comfy.model_management.get_torch_device()
    dev = Device(device)
    print(f"# real_scale: {'tiny' if args.tiny else 'real'} device={device} "
          f"dtype={'float32' if args.float32 else 'model'} steps={args.steps} warmup={args.warmup} "
          f"repeats={args.repeats} budget={args.budget:.0f}s torch={torch.__version__}", flush=True)
    if device.type == "cuda":
        print(f"# gpu: {torch.cuda.get_device_name()}", flush=True)
    rows = []
    every = specs(args.tiny)
    for kind in args.models:
        measure_model(runtime, kind, every[kind], args, device, dev, deadline, rows)
    print(HEADER)
    for r in rows:
        print(format_row(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"tiny": args.tiny, "device": str(device), "steps": args.steps,
                                               "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
