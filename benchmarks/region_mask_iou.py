"""Mask IoU of the Learnable Region Mask against the shapes domain's exact edit masks.

Instructions "make the red circle blue", "remove the square", "add a yellow triangle", "change the background to
green", each on small (r 0.08-0.12) and large (r 0.22-0.28) objects, n seeded scenes each (a second, smaller
distractor object in the change/remove scenes). Both modes: the trained predictor and the per-image search.
    OMP_NUM_THREADS=1 python benchmarks/region_mask_iou.py [--n 8] [--predictor PATH] [--clip PATH] [--random-clip]
--edit-cases PER_KIND measures instead the masks predicted from each edit-benchmark case's instruction
(embedded/edit_cases.py `EditCase.instruction`), the masks that the *_region_* methods of benchmarks/edit_methods.py
use.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedded import comfy_env  # noqa: E402

comfy_env.setup()
from embedded import dataset, domain_clip, train_region_predictor as trp  # noqa: E402
from embedded.domain_encoders import DomainEncoders  # noqa: E402
from latent_ops import region_predictor, region_search  # noqa: E402

INSTRUCTIONS = ("make the red circle blue", "remove the square", "add a yellow triangle",
                "change the background to green")
SIZES = {"small": (0.08, 0.12), "large": (0.22, 0.28)}


def _place(rng, shape, color, r, others):
    for _ in range(200):
        o = {"shape": shape, "color": color, "r": r, "cx": float(rng.uniform(r + 0.02, 1 - r - 0.02)),
             "cy": float(rng.uniform(r + 0.02, 1 - r - 0.02))}
        if not any(dataset._overlaps(o, p) for p in others):
            return o
    return None


def make_case(instruction, size, rng):
    """(source spec, target spec, op) for one benchmark scene."""
    r = float(rng.uniform(*SIZES[size]))
    bgs = [c for c in dataset.COLORS if c not in ("red", "blue", "yellow", "green")]
    bg = str(rng.choice(bgs))
    other = str(rng.choice([c for c in dataset.COLORS if c not in (bg, "red", "blue", "yellow", "green")]))
    while True:
        if instruction.startswith("make"):
            main = _place(rng, "circle", "red", r, [])
            dis = _place(rng, "square", other, 0.1, [main])
            if dis is None:
                continue
            src = {"background": bg, "objects": sorted([main, dis], key=lambda o: o["cx"])}
            tgt = {"background": bg, "objects": [dict(o, color="blue") if o is main else o for o in src["objects"]]}
            return src, tgt, "change"
        if instruction.startswith("remove"):
            main = _place(rng, "square", str(rng.choice(["red", "blue", "yellow"])), r, [])
            dis = _place(rng, "circle", other, 0.1, [main])
            if dis is None:
                continue
            src = {"background": bg, "objects": sorted([main, dis], key=lambda o: o["cx"])}
            return src, {"background": bg, "objects": [dis]}, "remove"
        if instruction.startswith("add"):
            base = _place(rng, "circle", other, 0.12, [])
            new = _place(rng, "triangle", "yellow", r, [base])
            if new is None:
                continue
            src = {"background": bg, "objects": [base]}
            return src, {"background": bg, "objects": sorted([base, new], key=lambda o: o["cx"])}, "add"
        obj = _place(rng, str(rng.choice(dataset.SHAPES)), other, r, [])
        src = {"background": bg, "objects": [obj]}
        return src, dict(src, background="green"), "background"


def iou(a, b):
    a, b = a > 0.5, b > 0.5
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0


def evaluate(enc, predictor, n=8, seed=0, modes=("trained", "per-image search"), instructions=INSTRUCTIONS,
             sizes=tuple(SIZES)):
    """{instruction: {size: {mode: mean IoU}}}."""
    out = {}
    for ins in instructions:
        for size in sizes:
            rng = np.random.default_rng(seed + 17 * len(ins) + (0 if size == "small" else 1))
            scores = {m: [] for m in modes if m != "trained" or predictor is not None}
            for _ in range(n):
                src, tgt, op = make_case(ins, size, rng)
                img = torch.from_numpy(dataset.render_scene(src, 64)[0])
                gt = trp.edit_mask(src, tgt, op)
                for m in scores:
                    scores[m].append(iou(_predict(enc, predictor, img, ins, m), gt))
            out.setdefault(ins, {})[size] = {k: float(np.mean(v)) for k, v in scores.items() if v}
    return out


def _predict(enc, predictor, img, instruction, mode):
    """The node's two modes on one 64x64 image [64, 64, 3]: binary mask [64, 64] (numpy)."""
    parsed = region_search.parse_instruction(instruction)
    with torch.no_grad():
        feats = enc.patches(img[None])
        if mode == "trained":
            tok, pad = enc.tokens([instruction])
            return region_predictor.to_mask(predictor(feats, tok, pad), (64, 64), 0.5, aspect=1.0)[0][0].numpy()
        grid = region_predictor.grid_shape(feats.shape[1])
        if parsed["op"] == "background":
            return region_search.background_region(feats[0], grid, (64, 64))[0].numpy()
        phrase = parsed["source"] if parsed["op"] in ("change", "remove") else ""
        return region_search.region_search(img, feats[0], grid, enc.encode_image, enc.phrase_embedding(phrase),
                                           parsed["op"], (64, 64))[0].numpy()


def evaluate_edit_cases(enc, predictor, cases, modes=("trained", "per-image search")):
    """[(case name, instruction, {mode: IoU})] on the edit benchmark's cases (case.instruction vs case.masks())."""
    rows = []
    for case in cases:
        img = torch.from_numpy(dataset.render_scene(case.source, 64)[0])
        gt, _ = case.masks(64)
        rows.append((case.name, case.instruction, {m: iou(_predict(enc, predictor, img, case.instruction, m), gt)
                                                   for m in modes if m != "trained" or predictor is not None}))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictor", default=trp.REGION_PREDICTOR)
    ap.add_argument("--clip", default=None, help="domain CLIP weights (default: the shipped ones)")
    ap.add_argument("--random-clip", action="store_true", help="smoke only: random DomainClip")
    ap.add_argument("--json", default=None)
    ap.add_argument("--edit-cases", type=int, default=None, metavar="PER_KIND",
                    help="instead: IoU on the edit benchmark's cases (the 7 fixed + PER_KIND generated per kind)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    enc = DomainEncoders(clip_model=domain_clip.DomainClip().eval() if args.random_clip else None,
                             clip_path=args.clip)
    pred = region_predictor.load(args.predictor) if Path(args.predictor).exists() else None
    if pred is None:
        print(f"no predictor at {args.predictor}: trained mode skipped")
    if args.edit_cases is not None:
        from embedded.edit_suite import benchmark_cases
        rows = evaluate_edit_cases(enc, pred, benchmark_cases(args.edit_cases))
        for name, ins, r in rows:
            print(f"{name:30s} {ins:38s} {r.get('trained', float('nan')):8.3f} {r['per-image search']:8.3f}")
        for mode in rows[0][2]:
            print(f"mean {mode}: {np.mean([r[mode] for _, _, r in rows]):.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return rows
    res = evaluate(enc, pred, args.n, args.seed)
    print(f"{'instruction':34s} {'size':6s} {'trained':>8s} {'search':>8s}")
    for ins, by_size in res.items():
        for size, r in by_size.items():
            print(f"{ins:34s} {size:6s} {r.get('trained', float('nan')):8.3f} {r.get('per-image search', float('nan')):8.3f}")
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
