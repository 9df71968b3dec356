"""Benchmark (not a test): inversion + multi-branch editing against plain sampling with equal steps.

Prints, per tiny model, the wall-time ratio (measured interleaved in one run) and the peak-memory ratio
(each configuration in its own subprocess, max RSS), then the K/V cache size at FLUX.1-dev scale computed
from shapes: this pack's cache against caching every block at every step.

    .venv/bin/python benchmarks/edit_overhead.py [--threads 1] [--steps 8] [--size 32] [--repeats 3]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def setup(threads):
    import torch
    torch.set_num_threads(threads)
    from harness import runtime
    runtime.boot()
    import nodes
    runtime._state["loop"].run_until_complete(nodes.load_custom_node(str(ROOT / "tests" / "fixture_nodes")))
    return runtime, sys.modules[nodes.NODE_CLASS_MAPPINGS["TinyTestModel"].__module__]


def workloads(runtime, fixtures, kind, steps, size):
    import torch
    from sampling import ksample
    inversion = runtime.pack_module("latent_ops.inversion")
    edit = runtime.pack_module("latent_ops.edit")
    model = fixtures.tiny_model(kind)
    pos, tgt, neg = (fixtures.tiny_conditioning(t) for t in ("a red circle", "a blue circle", ""))
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))

    def plain():
        ksample(model, tgt, neg, x, steps=steps, cfg=2.0, sampler="euler", scheduler="simple")

    def invert_and_edit():
        inv = inversion.invert(model, x, pos, steps=steps)
        edit.edit(model, inv, [edit.Branch("source", pos, 1.0), edit.Branch("target", tgt, 2.0)], negative=neg)
    return {"plain": plain, "edit": invert_and_edit}


def peak_rss_child(args, kind, mode):
    """Run one configuration in a fresh process and return its peak RSS in MB."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, mode, "--threads", str(args.threads),
                          "--steps", str(args.steps), "--size", str(args.size)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def flux_dev_cache_sizes(inject_steps=5, steps=15, resolution=1024, dtype_bytes=2):
    """Bytes of K/V caches for FLUX.1-dev (19 double + 38 single blocks, hidden 3072, 512 text tokens)."""
    blocks, hidden, text = 19 + 38, 3072, 512
    image = (resolution // 16) ** 2
    every = blocks * steps * 2 * (image + text) * hidden * dtype_bytes
    ours = blocks * inject_steps * 2 * image * hidden * dtype_bytes
    return every, ours


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="latent side (x8 pixels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MODE"))
    args = parser.parse_args()
    import torch
    runtime, fixtures = setup(args.threads)
    if args.child:
        kind, mode = args.child
        with torch.inference_mode():
            workloads(runtime, fixtures, kind, args.steps, args.size)[mode]()
        print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    print(f"threads={args.threads} steps={args.steps} latent={args.size}x{args.size} repeats={args.repeats}")
    print(f"{'model':8} {'plain s':>8} {'edit s':>8} {'time x':>7} {'mem x':>6}  (edit = inversion + source/target branches, CFG 2 on target)")
    for kind in ("sd15", "sdxl", "flux"):
        work = workloads(runtime, fixtures, kind, args.steps, args.size)
        times = {"plain": [], "edit": []}
        with torch.inference_mode():
            work["plain"]()  # warm-up
            for _ in range(args.repeats):
                for mode in ("plain", "edit"):
                    start = time.perf_counter()
                    work[mode]()
                    times[mode].append(time.perf_counter() - start)
        plain, edited = statistics.median(times["plain"]), statistics.median(times["edit"])
        mem = peak_rss_child(args, kind, "edit") / peak_rss_child(args, kind, "plain")
        print(f"{kind:8} {plain:8.3f} {edited:8.3f} {edited / plain:7.2f} {mem:6.2f}")
    every, ours = flux_dev_cache_sizes()
    print(f"FLUX.1-dev 1024x1024, 15 steps, bf16 K/V: every block at every step {every / 2**30:.1f} GiB; "
          f"this pack's cache mode (image tokens, 5 inject steps) {ours / 2**30:.1f} GiB "
          f"({ours / every:.2f}x); batch mode (default) caches nothing: 0 GiB")


if __name__ == "__main__":
    main()
