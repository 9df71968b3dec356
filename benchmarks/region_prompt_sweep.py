"""Region Prompt sweep (docs/region_prompt.md): its strengths and Keep Outside Mask's cell_threshold, in FlowEdit and
the Edit Sampler, on a tuning set (the suite drawn with another seed than the benchmark's), plus the baseline with a
prompt for the mask's content.

    .venv/bin/python benchmarks/region_prompt_sweep.py --denoisers unet flux [--seed 7] [--kinds addition]
                                                        [--per-kind 6] [--threads 1] [--out output/region_sweep.json]
Each variant is benchmarks/edit_methods.region_methods with only the listed settings changed; graphs, execution and
scores are edit_benchmark's. Prints the per-kind table at the end.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))

import edit_benchmark  # noqa: E402,I001
import edit_methods  # noqa: E402

# (strength, self_strength, cell_threshold)
GRID = [(4, 0, 0.2), (4, 4, 0.2), (10, 2, 0.2), (10, 8, 0.2), (20, 0, 0.2), (20, 8, 0.2), (4, 0, 0.0), (10, 2, 0.0),
        (20, 8, 0.0)]
SAMPLERS = {"fe": "flowedit_region_keep_exact_mask_paste", "es": "region_keep_exact_mask_paste"}


def builders():
    out = {}
    for strength, self_strength, cells in GRID:
        methods = edit_methods.region_methods(cell_threshold=cells, strength=float(strength),
                                              self_strength=float(self_strength))
        for short, name in SAMPLERS.items():
            out[f"{short}_s{strength}_self{self_strength}_cells{cells}"] = methods[name]
    for baseline in ("flowedit_keep_exact_mask_paste_local", "keep_exact_mask_paste_local"):
        out[baseline] = edit_methods.METHODS[baseline]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--denoisers", nargs="+", default=["unet", "flux"])
    parser.add_argument("--seed", type=int, default=7, help="the layout cases' seed (the benchmark's is 2026)")
    parser.add_argument("--kinds", nargs="+", default=None)
    parser.add_argument("--per-kind", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "output" / "region_sweep.json"))
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    variants = builders()
    results = edit_benchmark.run(args.denoisers, list(variants), None, args.steps, args.out, args.per_kind,
                                 builders=variants, kinds=args.kinds, seed=args.seed)
    print(edit_benchmark.kind_table(results))


if __name__ == "__main__":
    main()
