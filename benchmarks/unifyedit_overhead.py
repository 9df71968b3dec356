"""Benchmark (not a test): cost of UnifyEdit (SAPreserveOptimizer) against plain editing with the same graph.

Both variants run inversion + the Edit Sampler (replayed source + target branch, CFG on the target); the UnifyEdit
one uses the MODEL patched by the node (the example workflow's settings, or a sweep variant with --config).
Wall time: both measured interleaved in one process (order alternates every repeat), medians; ratios for the edit
sampler alone and for the whole graph (inversion + edit); `--clock cpu` uses process CPU time instead, for a
shared CPU. Peak memory: each variant in its own fresh subprocess: peak RSS during the run (Linux: the high-water
mark is reset after set-up via /proc/self/clear_refs, so ComfyUI's import-time peak does not hide the run;
elsewhere the process's max RSS), and on CUDA torch.cuda.max_memory_allocated (total, and above what was allocated
before the run).

It ends with the computed peak memory of an optimisation step on SDXL at 1024 px (benchmarks/unifyedit_memory.py;
--skip-estimate leaves it out).

    .venv/bin/python benchmarks/unifyedit_overhead.py [--cases 2] [--threads 1] [--steps 20] [--repeats 3]
    .venv/bin/python benchmarks/unifyedit_overhead.py --sd15-random [--size 64]   # SD1.5-size U-Net, random
                                                     # weights (fp16 on a GPU), 512x512; CPU smoke:
    ... --sd15-random --size 8 --steps 1 --repeats 1 --warmup 0 --config bal_iter2 --skip-memory
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from overhead_common import add_timing_args, boot, embedded_workload, timed_edit  # sets the import paths

VARIANTS = ("plain", "unifyedit")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2, help="embedded model: first N benchmark cases (default 2)")
    p.add_argument("--sd15-random", action="store_true",
                   help="an SD1.5-size U-Net with random weights (860 M params; meant for a GPU) instead of the "
                        "embedded model")
    p.add_argument("--size", type=int, default=64, help="--sd15-random latent side (64 = 512x512 pixels)")
    p.add_argument("--config", default="ue_balanced",
                   help="UnifyEdit settings: a benchmarks/unifyedit_sweep.py variant name (default: node defaults)")
    add_timing_args(p, steps=20, clock="wall")
    p.add_argument("--skip-memory", action="store_true", help="time only (no subprocesses)")
    p.add_argument("--skip-estimate", action="store_true", help="no SDXL 1024 px peak-memory estimate")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--case-index", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def node_settings(args, sd15):
    """The SAPreserveOptimizer inputs: the sweep variant's (example workflow + overrides); SD1.5 uses the node's
    1/4 layers (16x16 at 512 px) instead of the embedded model's 1/2."""
    import unifyedit_sweep
    if args.config not in unifyedit_sweep.CONFIGS:
        raise ValueError(f"--config must be one of {list(unifyedit_sweep.CONFIGS)}")
    s = unifyedit_sweep.settings(unifyedit_sweep.CONFIGS[args.config])
    if sd15:
        s.update(sa_layers="1/4", ca_layers="1/4")
    return s


def sd15_workload(device, size):
    import torch
    import attention_overhead
    model = attention_overhead.build_real("sd15", device)
    src, neg = attention_overhead.real_conditioning("sd15", seed=0)
    tgt, _ = attention_overhead.real_conditioning("sd15", seed=1)
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    return dict(model=model, clip=None, latent=latent, src=src, tgt=tgt, neg=neg, cfg=7.5,
                label=f"SD1.5-size random {size}x{size} latent ({size * 8}px)", prompt="", words="#2, #3")


def variants(runtime, work, settings):
    """{name: model}: the plain MODEL and the one patched by the SAPreserveOptimizer node."""
    node = runtime.pack_module("nodes.unifyedit").SAPreserveOptimizer()
    s = dict(settings, edit_tokens=work["words"], target_prompt=work["prompt"])
    patched = node.patch(work["model"], clip=work["clip"], **s)[0]
    return {"plain": work["model"], "unifyedit": patched}


def run_once(runtime, model, work, steps, sync, clock=time.perf_counter):
    """Seconds of (inversion, edit) and the edited latent, as the Invert and Edit Sampler nodes run them."""
    inversion = runtime.pack_module("latent_ops.inversion")
    edit = runtime.pack_module("latent_ops.edit")
    sync()
    start = clock()
    inv = inversion.invert(model, work["latent"], work["src"], steps=steps)
    sync()
    mid = clock()
    t_edit, out = timed_edit(runtime, model, inv, [edit.Branch("source", work["src"], 1.0),
                                                   edit.Branch("target", work["tgt"], work["cfg"])],
                             work["neg"], sync, clock)
    return mid - start, t_edit, out["target"]


def _status_mb(field):
    """VmRSS / VmHWM of this process from /proc/self/status in MB (None where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def child(args):
    """One variant in this fresh process: its peak RSS and (CUDA) peak allocated memory, as JSON."""
    import torch
    runtime, device = boot(args)
    work = sd15_workload(device, args.size) if args.sd15_random else embedded_workload(runtime, args.case_index)
    model = variants(runtime, work, node_settings(args, args.sd15_random))[args.child]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    reset = _reset_peak_rss()
    rss_before = _status_mb("VmRSS")
    with torch.inference_mode():
        run_once(runtime, model, work, args.steps, sync)
    mb = 2 ** 20
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_mb": peak, "rss_before_mb": rss_before, "rss_peak_is_run_only": reset,
                      "cuda_peak_mb": torch.cuda.max_memory_allocated() / mb if cuda else None,
                      "cuda_before_mb": base / mb if cuda else None}))


def peak_memory(args, argv, case_index):
    """{variant: child report}, each from its own subprocess."""
    out = {}
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, *argv, "--child", name, "--case-index", str(case_index)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"memory child '{name}' failed:\n{proc.stderr[-3000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def measure(runtime, work, models, args, sync):
    import torch
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with torch.inference_mode():
        for _ in range(args.warmup):  # first load, kernel selection
            for name in VARIANTS:
                run_once(runtime, models[name], work, args.steps, sync, clock)
        times = {name: {"invert": [], "edit": []} for name in VARIANTS}
        finite = True
        for r in range(args.repeats):
            for name in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                t_inv, t_edit, target = run_once(runtime, models[name], work, args.steps, sync, clock)
                times[name]["invert"].append(t_inv)
                times[name]["edit"].append(t_edit)
                finite = finite and bool(torch.isfinite(target).all())
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    return med, finite


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        return child(args)
    import torch
    runtime, device = boot(args)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    settings = node_settings(args, args.sd15_random)
    print(f"# unifyedit overhead: device={device} threads={torch.get_num_threads()} steps={args.steps} "
          f"repeats={args.repeats} clock={args.clock} config={args.config}")
    print(f"# {', '.join(f'{k}={v}' for k, v in settings.items())}")
    if device.type == "cuda":
        print(f"# gpu: {torch.cuda.get_device_name()}")
    header = (f"{'workload':<40} {'plain s':>8} {'ue s':>8} {'edit x':>7} {'graph x':>8} {'rss x':>6} "
              f"{'rss +MB':>8} {'rss work x':>10} {'cuda x':>7} {'cuda work x':>11}")
    print(header)
    results = []
    indices = [0] if args.sd15_random else range(args.cases)
    for index in indices:
        work = sd15_workload(device, args.size) if args.sd15_random else embedded_workload(runtime, index)
        models = variants(runtime, work, settings)
        med, finite = measure(runtime, work, models, args, sync)
        plain, ue = med["plain"], med["unifyedit"]
        row = {"workload": work["label"], "seconds": med, "finite": finite,
               "edit_ratio": ue["edit"] / plain["edit"],
               "graph_ratio": (ue["invert"] + ue["edit"]) / (plain["invert"] + plain["edit"])}
        if not args.skip_memory:
            mem = peak_memory(args, argv, index)
            row["memory"] = mem
            row["rss_ratio"] = mem["unifyedit"]["rss_mb"] / mem["plain"]["rss_mb"]
            row["rss_delta_mb"] = mem["unifyedit"]["rss_mb"] - mem["plain"]["rss_mb"]
            if all(m["rss_before_mb"] is not None for m in mem.values()):
                work_rss = {n: m["rss_mb"] - m["rss_before_mb"] for n, m in mem.items()}
                row["rss_work_ratio"] = work_rss["unifyedit"] / max(work_rss["plain"], 1e-6)
            if mem["plain"]["cuda_peak_mb"] is not None:
                work_mb = {n: m["cuda_peak_mb"] - m["cuda_before_mb"] for n, m in mem.items()}
                row["cuda_ratio"] = mem["unifyedit"]["cuda_peak_mb"] / mem["plain"]["cuda_peak_mb"]
                row["cuda_work_ratio"] = work_mb["unifyedit"] / max(work_mb["plain"], 1e-6)
        results.append(row)
        fmt = lambda key, spec: format(row[key], spec) if key in row else "-"  # noqa: E731
        print(f"{work['label'][:40]:<40} {plain['invert'] + plain['edit']:8.2f} {ue['invert'] + ue['edit']:8.2f} "
              f"{row['edit_ratio']:7.2f} {row['graph_ratio']:8.2f} {fmt('rss_ratio', '6.2f'):>6} "
              f"{fmt('rss_delta_mb', '8.0f'):>8} {fmt('rss_work_ratio', '10.2f'):>10} {fmt('cuda_ratio', '7.2f'):>7} "
              f"{fmt('cuda_work_ratio', '11.2f'):>11}"
              + ("" if finite else "  (non-finite output)"), flush=True)
        del work, models
    if not args.skip_estimate:
        import unifyedit_memory
        for line in unifyedit_memory.report():
            print("# " + line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": settings, "steps": args.steps, "results": results},
                                              indent=1))
    return results


if __name__ == "__main__":
    main()
