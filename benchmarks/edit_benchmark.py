"""The edit benchmark on the embedded shapes domain: every method on every case, metrics against ground truth.

    .venv/bin/python benchmarks/edit_benchmark.py [--denoisers unet flux] [--methods ...] [--cases N]
                                                   [--steps 20] [--out output/benchmark.json]
Prints one table per denoiser (mean over cases) and writes per-case JSON. Methods are graphs of the pack's
nodes run through ComfyUI's executor (benchmarks/edit_methods.py).
"""
import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))

METRICS = ("bg_psnr", "bg_ssim", "success", "attr_success", "shift", "area_ratio", "layout_ok", "clip", "iou",
           "recon_psnr")


def case_image_name(case):
    return f"attention_edit_case_{case.name}.png"


def write_case_images(cases):
    import folder_paths
    from PIL import Image
    from embedded import dataset
    folder = Path(folder_paths.get_input_directory())
    for case in cases:
        image, _ = dataset.render_scene(case.source, 64)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / case_image_name(case))
        edit_mask, _ = case.masks(64)
        Image.fromarray(((edit_mask > 0.5) * 255).astype(np.uint8)).save(
            folder / case_image_name(case).replace(".png", "_mask.png"))


def clip_scorer():
    """Domain-CLIP similarity(image, prompt) if its weights are shipped, else None."""
    from embedded import domain_clip, paths
    return domain_clip.scorer() if Path(paths.DOMAIN_CLIP).exists() else None


def score(case, edited, recon, scorer):
    from embedded import dataset, metrics
    source, _ = dataset.render_scene(case.source, 64)
    _, keep = case.masks(64)
    layout = metrics.layout_check(edited, case.target)
    row = {"bg_psnr": metrics.psnr(edited, source, keep), "bg_ssim": metrics.ssim(edited, source, keep),
           "success": float(layout["success"]), "attr_success": float(metrics.edit_success(edited, case.target)),
           "shift": layout["shift"], "area_ratio": layout["area_ratio"], "layout_ok": float(layout["layout_ok"]),
           "clip": scorer(edited, case.target_prompt) if scorer else float("nan"),
           "iou": metrics.object_iou(edited, source, case.source["background"])
           if case.kind in ("colour", "background") else float("nan"),
           "recon_psnr": metrics.psnr(recon, source) if recon is not None else float("nan")}
    return row


def run(denoisers, method_names, cases, steps, out_path, per_kind=6, builders=None, kinds=None, seed=None):
    """builders: optional {name: build(denoiser, case, image_name, steps)} used instead of edit_methods'
    (e.g. benchmarks/unifyedit_sweep.py's parameter variants); kinds: keep only cases of these edit kinds; seed:
    the layout cases' seed (another than the benchmark's gives a tuning set)."""
    import torch
    from harness import runtime
    import edit_methods
    from embedded.edit_suite import benchmark_cases
    runtime.boot()
    from embedded.edit_suite import SEED
    suite = [c for c in benchmark_cases(per_kind, SEED if seed is None else seed) if not kinds or c.kind in kinds]
    if not suite:
        raise ValueError(f"--kinds {kinds}: no benchmark case of these kinds")
    chosen = suite[:cases] if cases else suite
    write_case_images(chosen)
    scorer = clip_scorer()
    results = {}
    for denoiser in denoisers:
        for name in method_names:
            if not edit_methods.supports(name, denoiser):
                continue
            rows = []
            start = time.perf_counter()
            for case in chosen:
                build = builders[name] if builders else functools.partial(edit_methods.build, name)
                prompt, edited_node, recon_node = build(denoiser, case, case_image_name(case), steps)
                out = runtime.run_prompt(prompt)
                to_np = lambda node: out[node][0][0].float().cpu().numpy() if node else None
                rows.append({"case": case.name, "kind": case.kind,
                             **score(case, to_np(edited_node), to_np(recon_node), scorer)})
            results.setdefault(denoiser, {})[name] = {"cases": rows, "seconds": time.perf_counter() - start}
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            Path(out_path).write_text(json.dumps(results, indent=1))  # after every method: a crash keeps the rest
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(results, indent=1))
    return results


def kind_table(results):
    """Per edit kind: layout-aware success, background PSNR, median centre shift (px) and area ratio."""
    lines = []
    for denoiser, methods in results.items():
        kinds = sorted({r["kind"] for res in methods.values() for r in res["cases"]})
        lines.append(f"\n{denoiser}: success / bg PSNR / median shift px / median area ratio, per edit kind")
        lines.append(f"{'method':30}" + "".join(f"{k:>26}" for k in kinds))
        for name, res in methods.items():
            cells = []
            for k in kinds:
                rows = [r for r in res["cases"] if r["kind"] == k]
                med = lambda m: np.nanmedian([r.get(m, np.nan) for r in rows]) if any(
                    np.isfinite(r.get(m, np.nan)) for r in rows) else float("nan")
                cells.append(f"{np.mean([r['success'] for r in rows]):4.2f}/{np.mean([r['bg_psnr'] for r in rows]):5.1f}"
                             f"/{med('shift'):4.1f}/{med('area_ratio'):4.2f}")
            lines.append(f"{name:30}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def table(results):
    lines = []
    for denoiser, methods in results.items():
        lines.append(f"\n{denoiser}: mean over {len(next(iter(methods.values()))['cases'])} cases")
        lines.append(f"{'method':30}" + "".join(f"{m:>13}" for m in METRICS) + f"{'seconds':>9}")
        for name, res in methods.items():
            means = [np.nanmean([r.get(m, np.nan) for r in res["cases"]])
                     if any(np.isfinite(r.get(m, np.nan)) for r in res["cases"]) else float("nan") for m in METRICS]
            lines.append(f"{name:30}" + "".join(f"{v:13.3f}" for v in means) + f"{res['seconds']:9.1f}")
    return "\n".join(lines)


def markdown(results):
    """The tables of docs/results.md: means per method, then per edit kind (success / bg PSNR / shift / area)."""
    lines = []
    for denoiser, methods in results.items():
        n = len(next(iter(methods.values()))["cases"])
        lines += [f"\n### {denoiser} ({n} cases)\n", "| method | bg PSNR | bg SSIM | success | old success | shift px | "
                  "area ratio | colour-goal layout | domain CLIP | recon PSNR | s |", "|---|" + "---:|" * 10]
        for name, res in methods.items():
            rows = res["cases"]
            mean = lambda m: np.nanmean([r.get(m, np.nan) for r in rows]) if any(
                np.isfinite(r.get(m, np.nan)) for r in rows) else float("nan")
            med = lambda m: np.nanmedian([r.get(m, np.nan) for r in rows]) if any(
                np.isfinite(r.get(m, np.nan)) for r in rows) else float("nan")
            cells = [mean("bg_psnr"), mean("bg_ssim"), mean("success"), mean("attr_success"), med("shift"),
                     med("area_ratio"), mean("layout_ok"), mean("clip"), mean("recon_psnr")]
            lines.append(f"| {name} | " + " | ".join("" if not np.isfinite(v) else f"{v:.3f}" if i in (1, 2, 3, 6, 7)
                                                    else f"{v:.2f}" for i, v in enumerate(cells))
                         + f" | {res['seconds']:.0f} |")
        kinds = sorted({r["kind"] for res in methods.values() for r in res["cases"]})
        lines += [f"\n{denoiser}, per edit kind: success / bg PSNR / median centre shift (px) / median area ratio\n",
                  "| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for name, res in methods.items():
            cells = []
            for k in kinds:
                rows = [r for r in res["cases"] if r["kind"] == k]
                shift = np.nanmedian([r["shift"] for r in rows]) if any(np.isfinite(r["shift"]) for r in rows) \
                    else float("nan")
                area = np.nanmedian([r["area_ratio"] for r in rows]) if any(np.isfinite(r["area_ratio"])
                                                                            for r in rows) else float("nan")
                cells.append(f"{np.mean([r['success'] for r in rows]):.2f} / {np.mean([r['bg_psnr'] for r in rows]):.1f}"
                             f" / {shift:.1f} / {area:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    import edit_methods
    from embedded.edit_suite import KINDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--from-json", nargs="+", default=None, help="print the tables of saved runs instead of "
                        "running (several files: their denoisers are merged)")
    parser.add_argument("--markdown", action="store_true", help="with --from-json: the docs/results.md tables")
    parser.add_argument("--denoisers", nargs="+", default=["unet", "flux"])
    parser.add_argument("--methods", nargs="+", default=list(edit_methods.METHODS))
    parser.add_argument("--cases", type=int, default=0, help="first N cases only (0: all)")
    parser.add_argument("--per-kind", type=int, default=6,
                        help="layout cases per edit kind after the 7 fixed ones (embedded/edit_suite.py)")
    parser.add_argument("--kinds", nargs="+", default=None, choices=KINDS,
                        help="only cases of these edit kinds (e.g. --kinds colour --per-kind 10 for one claim)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "output" / "benchmark.json"))
    args = parser.parse_args()
    if args.from_json:
        results = {}
        for path in args.from_json:
            for denoiser, methods in json.loads(Path(path).read_text()).items():
                results.setdefault(denoiser, {}).update(methods)
        if args.markdown:
            print(markdown(results))
            return
        print(table(results))
        print(kind_table(results))
        return
    import torch
    torch.set_num_threads(args.threads)
    results = run(args.denoisers, args.methods, args.cases, args.steps, args.out, args.per_kind, kinds=args.kinds)
    print(table(results))
    print(kind_table(results))
    print(f"\nper-case results: {args.out}")


if __name__ == "__main__":
    main()
