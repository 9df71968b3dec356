"""Inversion quality and cost on the embedded denoisers: solver x steps x exact passes -> reconstruction PSNR, time.

    .venv/bin/python benchmarks/inversion_table.py [--cases 8] [--steps 15 30] [--threads 1]
Each source image of the edit suite is VAE-encoded, inverted with its own prompt (cfg 1), then regenerated freely
from the inverted noise by the same solver (no replay) and decoded; PSNR against the source image, beside the
VAE round trip. Time: the inversion's seconds over a plain sampling run of the same steps and solver, both
measured in this run (process CPU time, robust to other jobs).
"""
import argparse
import time

import numpy as np

from overhead_common import ROOT  # noqa: F401  (import paths)

CONFIGS = {"unet": [("ddim", 0), ("ddim", 1), ("ddim", 2), ("ddim", 3)],
           "flux": [("euler", 0), ("euler", 1), ("euler", 2), ("rf_solver", 0), ("rf_solver", 1), ("fireflow", 0)]}


def measure(runtime, denoiser, cases, steps, configs):
    import torch
    from embedded import dataset, metrics
    inversion = runtime.pack_module("latent_ops.inversion")
    edit = runtime.pack_module("latent_ops.edit")
    model, clip, vae = runtime.pack_module("embedded.loader").load_embedded(denoiser)
    rows, vae_psnr = [], []
    prepared = []
    for case in cases:
        image = dataset.render_scene(case.source, 64)[0]
        latent = vae.encode(torch.from_numpy(image)[None])
        tokens, pooled = clip.encode_from_tokens(clip.tokenize(case.source_prompt), return_pooled=True)
        prepared.append((image, latent, [[tokens, {"pooled_output": pooled}]]))
        vae_psnr.append(metrics.psnr(vae.decode(latent)[0].float().numpy(), image))
    for solver, passes in configs:
        psnr, inv_s, sample_s = [], [], []
        for image, latent, cond in prepared:
            start = time.process_time()
            inv = inversion.invert(model, latent, cond, steps=steps, solver=solver, exact_iterations=passes)
            inv_s.append(time.process_time() - start)
            start = time.process_time()
            out, _ = edit.edit(model, inv, [edit.Branch("target", cond, 1.0)])
            sample_s.append(time.process_time() - start)
            psnr.append(metrics.psnr(vae.decode(out["target"])[0].float().numpy(), image))
        rows.append(dict(denoiser=denoiser, solver=solver, passes=passes, steps=steps, psnr=float(np.mean(psnr)),
                         vae=float(np.mean(vae_psnr)), time_ratio=float(np.sum(inv_s) / np.sum(sample_s))))
        print(f"{denoiser:5} {solver:10} passes {passes}  steps {steps:3}  recon {rows[-1]['psnr']:6.2f} dB  "
              f"(VAE {rows[-1]['vae']:.2f})  inversion / plain sampling {rows[-1]['time_ratio']:.2f}x", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--denoisers", nargs="+", default=["unet", "flux"])
    p.add_argument("--cases", type=int, default=8, help="source images (every 5th case of the edit suite)")
    p.add_argument("--steps", type=int, nargs="+", default=[15])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from harness import runtime
    runtime.boot()
    from embedded.edit_suite import benchmark_cases
    cases = benchmark_cases()[::5][:args.cases]
    print("| denoiser | solver | exact passes | steps | reconstruction PSNR | VAE round trip | time / plain sampling |")
    rows = [r for d in args.denoisers for s in args.steps for r in measure(runtime, d, cases, s, CONFIGS[d])]
    for r in rows:
        print(f"| {r['denoiser']} | {r['solver']} | {r['passes']} | {r['steps']} | {r['psnr']:.2f} | {r['vae']:.2f} | "
              f"{r['time_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
