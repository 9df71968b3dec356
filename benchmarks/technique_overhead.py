"""Benchmark (not a test): per-step cost of each technique's patched MODEL in the Edit Sampler vs. the plain one.

On each embedded denoiser (unet, flux), one inversion of the first benchmark case (unpatched MODEL, source prompt)
feeds every variant's Edit Sampler run: the replayed source branch + the target branch with CFG, plus an auxiliary
branch (empty prompt, cfg 1) where the technique needs one. Each MODEL is built by calling the pack's node classes
with the example workflows' settings (workflows/build.py) and the case's exact edit mask:

    plain        unpatched MODEL, 2 branches (the reference)
    kvmix        ProEdit KV-Mix: delta 0.9, first round(5/15 * steps) steps, kv_source batch
    kvmix_cache  the same with kv_source 'inversion cache' (its own inversion: Invert node with cache_kv on, same
                 trajectory; only the Edit Sampler is timed)
    aux_only     unpatched MODEL, 3 branches (the cost of the third branch alone)
    uam_blend    UniformAttnPatch (aux branch) + adaptive Blend, 3 branches
    cpam         CPAM self-attention preservation + localized cross-attention, 3 branches
    masactrl     Source Attention Injection, key+value (MasaCtrl), paper defaults

Only the Edit Sampler is timed, all variants interleaved in one process (order reversed every other repeat).
Columns: median edit seconds and ms per step; `x plain`: ratio of the medians to plain; `x base`: to the unpatched
run with the same branches (plain or aux_only), i.e. the patch's own cost; `pair`: the median of the per-repeat
ratios (the runs of one repeat are adjacent in time, so it is more robust to drift on a loaded machine); `finite`:
every branch's output is finite; `d target`: mean |target latent - plain's target| (shows the patch acts).
`--clock cpu` (default) uses process CPU time, robust to other jobs on a shared CPU.

    .venv/bin/python benchmarks/technique_overhead.py [--denoisers unet flux] [--steps 15] [--repeats 3]
                                                      [--warmup 1] [--threads 1] [--clock cpu|wall] [--json FILE]
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from overhead_common import add_timing_args, boot, embedded_workload, timed_edit  # sets the import paths

VARIANTS = ("plain", "kvmix", "kvmix_cache", "aux_only", "uam_blend", "cpam", "masactrl")
DENOISERS = ("unet", "flux")
PROEDIT_INJECT = (5, 15)  # ProEdit: KV-mix on the first 5 of 15 steps


@dataclass
class Variant:
    model: object
    aux: bool = False          # a third (auxiliary, empty prompt, cfg 1) branch
    kv_cache: bool = False     # edit from an inversion that cached the source K/V of the inject steps
    patched: bool = True       # False: the unpatched MODEL (a reference)
    shift: bool = False        # the target starts from Latents-Shift's noise (ProEdit's pipeline)

    @property
    def base(self):
        """The unpatched variant with the same branches."""
        return "aux_only" if self.aux else "plain"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--denoisers", nargs="+", choices=DENOISERS, default=list(DENOISERS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="subset to measure (plain is always added)")
    p.add_argument("--case", type=int, default=0, help="index into embedded.edit_suite.benchmark_cases()")
    add_timing_args(p, steps=15, clock="cpu")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be at least 1")
    args.variants = ["plain"] + [v for v in args.variants if v != "plain"]
    return args


def inject_steps(steps):
    """ProEdit's inject share scaled to the step count (at least 1)."""
    return max(1, round(PROEDIT_INJECT[0] * steps / PROEDIT_INJECT[1]))


def edit_mask(case):
    """The case's exact edit mask as a ComfyUI MASK [1, 64, 64] (binarised like the workflows' mask image)."""
    import torch
    mask, _ = case.masks(64)
    return torch.from_numpy(mask > 0.5).float()[None]


def variants(runtime, model, mask, steps):
    """{name: Variant}, each MODEL patched by the pack's nodes with workflows/build.py's example settings."""
    proedit = runtime.pack_module("nodes.proedit")
    uniform = runtime.pack_module("nodes.uniform_attention")
    cpam = runtime.pack_module("nodes.cpam")
    injection = runtime.pack_module("nodes.source_injection")

    def kvmix(kv_source):  # proedit_patch
        return proedit.KVMix().patch(model, delta=0.9, inject_steps=inject_steps(steps), edit_type="change",
                                     kv_source=kv_source, mask=mask)[0]

    uam = uniform.UniformAttnPatch().patch(model, branches="aux", during_inversion=True)[0]  # uam_patch
    uam = uniform.Blend().patch(uam, mode="adaptive", into="target", fill="aux", quantile=0.5, threshold_scale=2.0,
                                T_mask=200, dilation=1)[0]
    target = dict(target_mask_mode="source", mask_after_step=5, mask_threshold=0.3)  # cpam_patch
    preserved = cpam.CPAMSelfAttentionPreservation().patch(model, source_mask=mask, mode="change",
                                                           retain_object=False, step_threshold=3, layer_threshold=8,
                                                           plain_fraction=0.1, seed=0, **target)[0]
    localized = cpam.CPAMLocalizedCrossAttention().patch(preserved, source_mask=mask, **target)[0]
    masactrl = injection.SourceInjection().patch(model, mode="key+value (MasaCtrl)", start_step=-1, end_step=-1,
                                                 layers="paper default", layer_fraction=0.0)[0]
    return {"plain": Variant(model, patched=False), "kvmix": Variant(kvmix("batch")),
            "kvmix_cache": Variant(kvmix("inversion cache"), kv_cache=True),
            "aux_only": Variant(model, aux=True, patched=False), "uam_blend": Variant(uam, aux=True),
            "cpam": Variant(localized, aux=True), "masactrl": Variant(masactrl)}


def inversions(runtime, work, steps, need_cache):
    """{'plain': the unpatched inversion, 'kv_cache': the same with the K/V of the inject steps (Invert node)}."""
    inverted = {"plain": runtime.pack_module("latent_ops.inversion").invert(work["model"], work["latent"],
                                                                             work["src"], steps=steps)}
    if need_cache:
        node = runtime.pack_module("nodes.invert").Invert()
        inverted["kv_cache"] = node.run(work["model"], {"samples": work["latent"]}, work["src"], steps, "simple",
                                        "auto", 1.0, capture_steps=f"0-{inject_steps(steps) - 1}", cache_kv=True,
                                        cache_dtype="auto", cache_device="cpu")[0]
    return inverted


def branches(runtime, work, aux):
    edit = runtime.pack_module("latent_ops.edit")
    out = [edit.Branch("source", work["src"], 1.0), edit.Branch("target", work["tgt"], work["cfg"])]
    return out + [edit.Branch("aux", work["neg"], 1.0)] if aux else out


def measure(runtime, work, chosen, inverted, args, sync):
    """{name: [edit seconds per repeat]}, {name: all outputs finite}, {name: last target latent}."""
    import torch
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = list(chosen)

    def run(name):
        v = chosen[name]
        inv = inverted["kv_cache" if v.kv_cache else "plain"]
        return timed_edit(runtime, v.model, inv, branches(runtime, work, v.aux), work["neg"], sync, clock)

    times = {n: [] for n in names}
    finite = {n: True for n in names}
    targets = {}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for name in names:
                run(name)
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                seconds, out = run(name)
                times[name].append(seconds)
                finite[name] = finite[name] and all(bool(torch.isfinite(x).all()) for x in out.values())
                targets[name] = out["target"]
    return times, finite, targets


def paired(times, name, reference):
    """Median over repeats of name's time / reference's time in the same repeat."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def rows(denoiser, label, chosen, times, finite, targets, steps):
    """One result dict per variant: medians, per-step ms, ratios (of medians and paired), finiteness, change."""
    med = {n: statistics.median(t) for n, t in times.items()}
    out = []
    for name, v in chosen.items():
        base = v.base if v.patched and v.base in med else None
        out.append({
            "denoiser": denoiser, "case": label, "variant": name, "branches": 3 if v.aux else 2,
            "edit_seconds": med[name], "seconds": times[name], "ms_per_step": 1000 * med[name] / steps,
            "ratio_plain": med[name] / med["plain"], "paired_plain": paired(times, name, "plain"),
            "ratio_base": med[name] / med[base] if base else None,
            "paired_base": paired(times, name, base) if base else None,
            "finite": finite[name], "target_change": float((targets[name] - targets["plain"]).abs().mean())})
    return out


HEADER = (f"{'denoiser':<8} {'variant':<12} {'branches':>8} {'edit s':>7} {'ms/step':>7} {'x plain':>7} {'pair':>5} "
          f"{'x base':>6} {'pair':>5} {'finite':>6} {'d target':>8}")


def format_row(r):
    base = f"{r['ratio_base']:6.2f} {r['paired_base']:5.2f}" if r["ratio_base"] else f"{'-':>6} {'-':>5}"
    return (f"{r['denoiser']:<8} {r['variant']:<12} {r['branches']:>8} {r['edit_seconds']:7.3f} "
            f"{r['ms_per_step']:7.1f} {r['ratio_plain']:7.2f} {r['paired_plain']:5.2f} {base} "
            f"{str(r['finite']):>6} {r['target_change']:8.4f}")


def main(argv=None):
    args = parse_args(argv)
    import torch
    runtime, device = boot(args)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"# technique overhead in the Edit Sampler: device={device} threads={torch.get_num_threads()} "
          f"steps={args.steps} repeats={args.repeats} warmup={args.warmup} clock={args.clock} "
          f"kv-mix inject steps={inject_steps(args.steps)}")
    print(HEADER)
    results = []
    for denoiser in args.denoisers:
        work = embedded_workload(runtime, args.case, denoiser)
        every = variants(runtime, work["model"], edit_mask(work["case"]), args.steps)
        chosen = {n: every[n] for n in args.variants}
        inverted = inversions(runtime, work, args.steps, any(v.kv_cache for v in chosen.values()))
        times, finite, targets = measure(runtime, work, chosen, inverted, args, sync)
        for row in rows(denoiser, work["label"], chosen, times, finite, targets, args.steps):
            results.append(row)
            print(format_row(row), flush=True)
        del work, every, chosen, inverted
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "clock": args.clock,
                                               "threads": args.threads, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
