"""UnifyEdit sweep on the edit benchmark (embedded U-Net): the three gradient modes at the node defaults, a small
grid of the balanced mode's scheduler and optimisation strength, and the baselines, on the benchmark's cases.

    .venv/bin/python benchmarks/unifyedit_sweep.py [--cases N] [--steps 20] [--threads 1] [--configs ...]
                                                    [--out output/unifyedit_sweep.json]
Every UnifyEdit variant is the example workflow's patch (workflows/build.py unifyedit_patch: the node's defaults,
with the 1/2 attention layers of the embedded U-Net) with only the listed inputs changed; graphs, execution and
scores are edit_benchmark's. Prints the benchmark's table (mean over cases) as each variant finishes and at the end,
and writes per-case results plus each variant's full node settings as JSON.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))

import build as workflows  # noqa: E402,I001 (workflows/ is on sys.path)
import edit_benchmark  # noqa: E402
import edit_methods  # noqa: E402
from graph import Graph  # noqa: E402

NODE = "AttentionEditSAPreserveOptimizer"
PER_CASE = ("edit_tokens", "target_prompt")  # set from each case by unifyedit_patch
BASELINES = ("target_prompt", "recon_source_prompt")
# (a) the gradient modes at the node defaults (the paper's ablation)
MODES = {"ue_naive": {"gradient_mode": "naive"}, "ue_normalized": {"gradient_mode": "normalized"},
         "ue_balanced": {"gradient_mode": "balanced"}}
# (b) balanced mode: optimisation strength and the scheduler's shape
GRID = {
    "bal_step5": {"step_size": 5.0},                                     # 2x the step
    "bal_step10": {"step_size": 10.0},                                   # 4x the step
    "bal_iter2": {"iterations": 2},                                      # fewer gradient steps per step
    "bal_active5": {"active_steps": 5},                                  # optimise the first quarter only
    "bal_sa2_ca0.5": {"beta1": 2.0, "beta2": 0.5},                       # preservation-heavy magnitudes
    "bal_k1": {"k1": 1.0, "k2": 1.0},                                    # slow crossover (near linear)
    "bal_k3": {"k1": 3.0, "k2": 3.0},                                    # crossover at a fifth of the window
}
CONFIGS = {**MODES, **{name: {"gradient_mode": "balanced", **o} for name, o in GRID.items()}}


def settings(overrides, case=None):
    """The node inputs a variant runs with (less the per-case words): the example workflow's UnifyEdit node
    with `overrides` applied.
    Raises ValueError for an override that is not one of that node's inputs."""
    from embedded.edit_suite import benchmark_cases
    g = Graph()
    link = workflows.unifyedit_patch(g, {"case": case or benchmark_cases(0)[0], "model": ["m", 0], "clip": ["m", 1]})
    node = g.prompt[link[0]]
    if node["class_type"] != NODE:
        raise ValueError(f"workflows/build.py unifyedit_patch no longer returns a {NODE} output")
    unknown = set(overrides) - set(node["inputs"])
    if unknown:
        raise ValueError(f"sweep overrides {sorted(unknown)} are not inputs of {NODE} in unifyedit_patch")
    return {k: v for k, v in {**node["inputs"], **overrides}.items()
            if not isinstance(v, list) and k not in PER_CASE}


def variant(overrides):
    """An edit_benchmark builder: the benchmark's UnifyEdit graph with the node's inputs overridden."""
    settings(overrides)  # fail before any run for an override the node does not have

    def patch(g, ctx):
        link = workflows.unifyedit_patch(g, ctx)
        g.prompt[link[0]]["inputs"].update(overrides)
        return link
    return lambda denoiser, case, image_name, steps: edit_methods._graph(denoiser, case, image_name, steps,
                                                                         patch=patch)


def builders(names):
    unknown = [n for n in names if n not in CONFIGS and n not in BASELINES]
    if unknown:
        raise ValueError(f"--configs: unknown {unknown}; choose from {list(BASELINES) + list(CONFIGS)}")
    return {n: edit_methods.METHODS[n] if n in BASELINES else variant(CONFIGS[n]) for n in names}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(BASELINES) + list(CONFIGS),
                        help=f"subset of {list(BASELINES) + list(CONFIGS)} (default all)")
    parser.add_argument("--cases", type=int, default=0, help="first N benchmark cases only (0: all)")
    parser.add_argument("--per-kind", type=int, default=2, help="generated cases per edit kind (edit_benchmark)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "output" / "unifyedit_sweep.json"))
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    chosen = builders(args.configs)
    report = {"steps": args.steps, "denoiser": "unet", "cases": args.cases, "per_kind": args.per_kind,
              "settings": {n: settings(CONFIGS[n]) for n in chosen if n in CONFIGS}, "results": {}}
    for name in chosen:  # one benchmark run per variant, so a long sweep reports and saves as it goes
        one = edit_benchmark.run(["unet"], [name], args.cases, args.steps, args.out, args.per_kind,
                                 builders={name: chosen[name]})
        report["results"][name] = one["unet"][name]
        Path(args.out).write_text(json.dumps(report, indent=1))
        lines = edit_benchmark.table({"unet": {name: one["unet"][name]}}).splitlines()
        print("\n".join(lines[1:] if len(report["results"]) == 1 else lines[-1:]), flush=True)
    print(edit_benchmark.table({"unet": report["results"]}))
    print("\nvariants (UnifyEdit node inputs changed from the example workflow's):")
    for name in chosen:
        if name in CONFIGS:
            print(f"  {name:16} {CONFIGS[name]}")
    print(f"\nper-case results and settings: {args.out}")
    return report


if __name__ == "__main__":
    main()
