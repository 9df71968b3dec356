"""The sweep behind the preservation defaults: FlowEdit's window (n_max of 15 steps) and guidance, with and without
Keep Outside Mask, and the Edit Sampler's start step under Keep Outside Mask, on the first 19 benchmark cases.

    .venv/bin/python benchmarks/preservation_sweep.py [--denoisers unet flux] [--cases 19] [--only NAME ...]
Prints the benchmark's tables (docs/preservation.md quotes them).
"""
import argparse

from overhead_common import ROOT

import edit_benchmark
import edit_methods as em


def variants():
    """{name: build} for edit_benchmark.run(builders=...)."""
    out = {}
    for n_max in (6, 8, 10, 12):
        for target_cfg in (2.0, 3.0):
            out[f"flowedit_n{n_max}_cfg{target_cfg:g}"] = em._flowedit(n_max=n_max, target_cfg=target_cfg)
    for n_max, target_cfg in ((8, 2.0), (12, 3.0)):
        out[f"flowedit_n{n_max}_cfg{target_cfg:g}_keep_attention"] = em._flowedit(
            em._keep(mask="attention"), n_max=n_max, target_cfg=target_cfg)
    for n_max in (12, 14, 15):
        for target_cfg in (3.0, 4.5):
            out[f"flowedit_n{n_max}_cfg{target_cfg:g}_keep_exact"] = em._flowedit(em._keep(), n_max=n_max,
                                                                                  target_cfg=target_cfg)
    for start in (0, 3, 6):
        out[f"edit_sampler_start{start}_keep_exact"] = (
            lambda start: lambda d, c, i, s: em._graph(d, c, i, s, patch=em._keep(), start_step=start))(start)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--denoisers", nargs="+", default=["unet", "flux"])
    p.add_argument("--cases", type=int, default=19)
    p.add_argument("--only", nargs="+", default=None, help="run only these variants")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "output" / "preservation_sweep.json"))
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    builders = variants()
    names = args.only or list(builders)
    results = edit_benchmark.run(args.denoisers, names, args.cases, 15, args.out, builders=builders)
    print(edit_benchmark.table(results))
    print(edit_benchmark.kind_table(results))


if __name__ == "__main__":
    main()
