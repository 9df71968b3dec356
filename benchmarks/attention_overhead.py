"""Per-step sampling time of a MODEL patched with a pass-through controller chain, relative to the plain MODEL.

    .venv/bin/python benchmarks/attention_overhead.py                  # tiny models on the CPU, 1 thread
    .venv/bin/python benchmarks/attention_overhead.py --scale real     # SD1.5-size 512px, FLUX-dev-size 1024px (GPU)

Variants, measured interleaved in one run (order alternates every repeat) under torch.inference_mode():
plain (the user's MODEL), hooked (hooks installed, empty chain) and chain (hooks + one pass-through Controller,
what a technique node returns). Reports the median per-step time of each and the ratio chain / plain
(target <= 1.05). Real ComfyUI (harness.runtime.boot) and ComfyUI's own KSampler path (comfy.sample.sample).
"""
import argparse
import importlib.util
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_LATENTS = (16, 64)  # 128x128 and 512x512 pixels


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("tiny", "real"), default="tiny")
    p.add_argument("--kinds", nargs="+", help="tiny: sd15 sdxl flux (default all); real: sd15 flux")
    p.add_argument("--latent", type=int, nargs="+", help="latent sizes (default: tiny 16 64; real sd15 64, flux 128)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeats", type=int, default=7, help="timed samplings per variant (default 7)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps per timed sampling (default 4)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU when torch sees one, else the CPU")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="cpu: process CPU time (robust to other processes sharing the cores); "
                        "auto: cpu on the CPU, wall on a GPU")
    return p.parse_args(argv)


def load_fixtures():
    """tests/fixture_nodes as a plain module (tiny_model, tiny_conditioning)."""
    spec = importlib.util.spec_from_file_location("edit_pack_bench_fixtures",
                                                  ROOT / "tests" / "fixture_nodes" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def init_on_device_(module, seed):
    """Like architectures.init_weights_, but with a generator on the parameters' device (for 12 B params)."""
    import torch
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            gen = torch.Generator(device=p.device).manual_seed(seed * 100003 + i)
            noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight") or name.endswith("scale"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return module


def build_real(kind, device, seed=0):
    """A random-weight SD1.5-size U-Net (fp16 on GPU, fp32 on CPU) or FLUX-dev-size MMDiT (bf16) ModelPatcher."""
    import torch
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    from embedded import architectures as arch
    on_gpu = device.type != "cpu"
    if kind == "sd15":
        config = arch.sd15_unet_config(torch.float16 if on_gpu else torch.float32)
        model = comfy.model_base.BaseModel(arch.SmallModelConfig(config), device=device)
    elif kind == "flux":
        config = arch.flux_dev_config(torch.bfloat16)
        model_config = arch.SmallModelConfig(config, sampling_settings={"shift": 1.0})
        model_config.latent_format.latent_channels = 16
        model = comfy.model_base.Flux(model_config, device=device)
    else:
        raise ValueError(f"real scale has kinds sd15 and flux, not {kind!r}")
    init_on_device_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def real_conditioning(kind, seed=0):
    import torch
    gen = torch.Generator().manual_seed(seed)
    if kind == "sd15":
        return [[torch.randn(1, 77, 768, generator=gen), {}]], [[torch.randn(1, 77, 768, generator=gen), {}]]
    cond = [[torch.randn(1, 512, 4096, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen),
                                                        "guidance": 3.5}]]
    return cond, cond


def cases(args, device):
    """(label, build) pairs; build() -> (model, positive, negative, latent, cfg)."""
    import torch
    out = []
    if args.scale == "tiny":
        fixtures = load_fixtures()
        for kind in args.kinds or ("sd15", "sdxl", "flux"):
            for size in args.latent or TINY_LATENTS:
                def build(kind=kind, size=size):
                    pos, neg = fixtures.tiny_conditioning("a red circle"), fixtures.tiny_conditioning("")
                    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
                    return fixtures.tiny_model(kind), pos, neg, latent, 2.0
                out.append((f"tiny {kind} {size}x{size} latent ({size * 8}px)", build))
    else:
        for kind in args.kinds or ("sd15", "flux"):
            for size in args.latent or ((64,) if kind == "sd15" else (128,)):
                def build(kind=kind, size=size):
                    pos, neg = real_conditioning(kind)
                    channels = 4 if kind == "sd15" else 16
                    latent = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
                    return build_real(kind, device), pos, neg, latent, (7.0 if kind == "sd15" else 1.0)
                name = "SD1.5-size U-Net" if kind == "sd15" else "FLUX-dev-size MMDiT"
                out.append((f"{name} {size}x{size} latent ({size * 8}px)", build))
    return out


def timed_sample(model, pos, neg, latent, cfg, steps, sync, clock=time.perf_counter):
    """Seconds per step of one KSampler-path sampling run."""
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, 0)
    sync()
    start = clock()
    comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, latent, denoise=1.0,
                        disable_pbar=True, seed=0)
    sync()
    return (clock() - start) / steps


def measure(variants, pos, neg, latent, cfg, steps, repeats, sync, clock=time.perf_counter):
    """{variant: [seconds per step]}, interleaved: every repeat runs each variant once, in rotating order."""
    names = list(variants)
    for name in names:  # warm-up (first load, kernel selection, caches)
        timed_sample(variants[name], pos, neg, latent, cfg, steps, sync, clock)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            times[name].append(timed_sample(variants[name], pos, neg, latent, cfg, steps, sync, clock))
    return times


def main(argv=None):
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    from harness import runtime
    logging.getLogger().setLevel(logging.ERROR)  # ComfyUI's import warnings (torchaudio) are not results
    runtime.boot(cpu=not gpu)
    hooks = runtime.pack_module("attention.hooks")
    controller = runtime.pack_module("attention.controller")
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    clock = time.process_time if use_cpu_clock else time.perf_counter
    print(f"# attention overhead: scale={args.scale} device={device} threads={torch.get_num_threads()} "
          f"steps={args.steps} repeats={args.repeats} clock={'cpu' if use_cpu_clock else 'wall'} "
          f"torch={torch.__version__}")
    if device.type == "cuda":
        print(f"# gpu: {torch.cuda.get_device_name()}")
    print(f"{'model':<44} {'plain ms/step':>14} {'hooked':>9} {'chain':>9} {'chain/plain':>12} {'paired':>8}")
    results = []
    for label, build in cases(args, device):
        with torch.inference_mode():
            model, pos, neg, latent, cfg = build()
            hooked = model.clone()
            hooks.install_hooks(hooked)
            variants = {"plain": model, "hooked": hooked,
                        "chain": hooks.with_controller(model, controller.Controller())}
            times = measure(variants, pos, neg, latent, cfg, args.steps, args.repeats, sync, clock)
        med = {name: statistics.median(t) for name, t in times.items()}
        ratio = med["chain"] / med["plain"]
        paired = statistics.median(c / p for c, p in zip(times["chain"], times["plain"]))
        results.append((label, med, ratio, paired))
        print(f"{label:<44} {med['plain'] * 1e3:>14.2f} {med['hooked'] * 1e3:>9.2f} {med['chain'] * 1e3:>9.2f} "
              f"{ratio:>12.3f} {paired:>8.3f}", flush=True)
        del model, hooked, variants
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
    worst = max(r[2] for r in results)
    print(f"# worst chain/plain ratio {worst:.3f} ({'within' if worst <= 1.05 else 'ABOVE'} the 1.05 target)")
    return results


if __name__ == "__main__":
    main()
