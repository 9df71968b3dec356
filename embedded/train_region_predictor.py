"""Train the learnable-region predictor (latent_ops.region_predictor) on the shapes domain with the paper's losses.

Data substitution (docs/region_mask.md): the paper captions images with an MLLM and writes instructions and target
descriptions with an LLM; here every training image is a rendered scene with its exact caption, the instruction
comes from templates ("make the red circle blue", "turn the red circle into a square", "remove the square",
"add a yellow triangle", "change the background to green") and the target description is the caption of the
edited spec. Generator substitution: the paper renders I_res with a frozen text-to-image model conditioned on the
region (its eq. 23 blend m*z_model + (1-m)*z_src); here the frozen "generator" is the domain renderer of the target
description, blended by the predicted soft mask: I_res = m*render(target) + (1-m)*I_src (differentiable in m).
Because that generator is perfect, nothing else keeps the mask tight, so a small area penalty stands in for the
real generator's loss of fidelity outside the object. Losses (paper eqs. 4-11):
    L = a*(L_semEdited + L_semOriginal) + b*(l_g*L_CLIPg + l_d*L_CLIPd + l_s*L_CLIPs) + area*mean(m)
        [+ aux*BCE(P_region, exact patch mask)]   (auxiliary, switch with --aux; the domain has exact masks)
Features: image = domain CLIP patch_features (8x8x128), instruction = MiniLM token states (32x384, padding masked).
    OMP_NUM_THREADS=1 python -m embedded.train_region_predictor [--aux 1.0] [--minutes 10]
"""
import argparse
import copy
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import comfy_env

comfy_env.setup()
from . import dataset, domain_clip, paths, text_encoder  # noqa: E402
from .domain_encoders import DomainEncoders  # noqa: E402

REGION_PREDICTOR = os.path.join(paths.WEIGHTS_DIR, "region_predictor.safetensors")
CACHE = "/tmp/embedded_cache/region_instructions.pt"


def _predictor_module():
    import importlib
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("latent_ops.region_predictor")


# ---------------------------------------------------------------- instructions (templates replace the LLM)

def make_edit(spec, rng, version=dataset.DATA_VERSION):
    """(instruction, target spec, op) for a random template edit of a source spec (added objects get the pair
    radius of the data version)."""
    objs = spec["objects"]
    used = {o["color"] for o in objs}
    ops = ["colour", "shape", "remove", "background"] + (["add"] * 2 if len(objs) == 1 else [])
    op = ops[rng.integers(len(ops))]
    tgt = copy.deepcopy(spec)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if op == "colour":
        c2 = str(rng.choice([c for c in dataset.COLORS if c != spec["background"] and c not in used]))
        tgt["objects"][i]["color"] = c2
        tpl = ["make the {c} {s} {c2}", "change the {c} {s} to {c2}", "paint the {c} {s} {c2}"]
        ins = tpl[rng.integers(len(tpl))].format(c=o["color"], s=o["shape"], c2=c2)
    elif op == "shape":
        s2 = str(rng.choice([s for s in dataset.SHAPES if s != o["shape"]]))
        tgt["objects"][i]["shape"] = s2
        tpl = ["change the {c} {s} into a {s2}", "turn the {c} {s} into a {s2}"]
        ins = tpl[rng.integers(len(tpl))].format(c=o["color"], s=o["shape"], s2=s2)
    elif op == "remove":
        del tgt["objects"][i]
        if not tgt["objects"]:  # removing the only object: the caption universe has no empty scenes
            return make_edit(spec, rng, version) if len(objs) > 1 else _recolour_bg(spec, rng)
        unique = sum(p["shape"] == o["shape"] for p in objs) == 1
        ins = f"remove the {o['shape']}" if unique and rng.random() < 0.5 else f"remove the {o['color']} {o['shape']}"
    elif op == "add":
        s2 = str(rng.choice(dataset.SHAPES))
        c2 = str(rng.choice([c for c in dataset.COLORS if c != spec["background"] and c not in used]))
        new = None
        for _ in range(50):
            cand = dataset._random_object(rng, s2, c2, dataset.RADII[version][1])
            if not dataset._overlaps(cand, o):
                new = cand
                break
        if new is None:
            return _recolour_bg(spec, rng)
        tgt["objects"] = sorted(tgt["objects"] + [new], key=lambda p: p["cx"])
        ins = f"add {dataset.article(c2)} {c2} {s2}"
    else:
        return _recolour_bg(spec, rng)
    return ins, tgt, op


def _recolour_bg(spec, rng):
    used = {o["color"] for o in spec["objects"]}
    b2 = str(rng.choice([c for c in dataset.COLORS if c not in used and c != spec["background"]]))
    tgt = dict(copy.deepcopy(spec), background=b2)
    tpl = ["change the background to {b}", "make the background {b}"]
    return tpl[rng.integers(len(tpl))].format(b=b2), tgt, "background"


def edit_mask(source, target, op, size=64):
    """Exact edit region of a template edit: changed objects (source and target), or the background."""
    _, sm = dataset.render_scene(source, size)
    _, tm = dataset.render_scene(target, size)
    if op == "background":
        return 1.0 - np.clip(sm.sum(0), 0, 1)
    changed = [m for o, m in zip(source["objects"], sm) if o not in target["objects"]]
    changed += [m for o, m in zip(target["objects"], tm) if o not in source["objects"]]
    return np.clip(np.sum(changed, axis=0), 0, 1) if changed else np.zeros((size, size), np.float32)


# ---------------------------------------------------------------- losses

def sim_matrix(f):
    f = F.normalize(f, dim=-1)
    return f @ f.transpose(1, 2)


def losses(pred, enc, batch, weights):
    """Dict of the loss terms for a batch (see the module docstring)."""
    src, tgt = batch["src"], batch["tgt"]
    prob, (f_img, f_edit, _) = pred(batch["patches"], batch["ins"], batch["pad"], return_features=True)
    n = prob.shape[1]
    g = int(round(n ** 0.5))
    m = F.interpolate(prob.reshape(-1, 1, g, g), size=src.shape[1:3], mode="bilinear", align_corners=False)
    m = m.permute(0, 2, 3, 1)
    res = m * tgt + (1 - m) * src
    e_res, f_res = enc.clip.image(res)
    t_src, t_tgt = batch["t_src"], batch["t_tgt"]
    out = {
        "sem": (1 - F.cosine_similarity(pred.semantic(f_edit), t_tgt)).mean()
        + (1 - F.cosine_similarity(pred.semantic(f_img), t_src)).mean(),
        "clip_g": (1 - F.cosine_similarity(e_res, t_tgt)).mean(),
        "clip_d": (1 - F.cosine_similarity(e_res - batch["e_src"], t_tgt - t_src)).mean(),
        "clip_s": ((sim_matrix(batch["f_src"]) - sim_matrix(f_res)) ** 2).mean(),
        "area": prob.mean(),
        "mask": F.binary_cross_entropy(prob, batch["gt_patch"]),
    }
    total = weights["a"] * out["sem"] + weights["b"] * (weights["l_g"] * out["clip_g"] + weights["l_d"] * out["clip_d"]
                                                        + weights["l_s"] * out["clip_s"])
    total = total + weights["area"] * out["area"] + weights["aux"] * out["mask"]
    out["total"] = total
    return out


def make_pool(n, seed, enc, size=64, version=dataset.DATA_VERSION):
    """n training samples with all frozen features precomputed."""
    rng = np.random.default_rng(seed)
    exclude = set(dataset.held_out_triples())
    rows = []
    for _ in range(n):
        spec = dataset.random_spec(rng, two_prob=0.4, exclude=exclude, version=version)
        ins, tgt, op = make_edit(spec, rng, version)
        rows.append((spec, tgt, ins, op))
    src = torch.from_numpy(np.stack([dataset.render_scene(r[0], size)[0] for r in rows]))
    tgt = torch.from_numpy(np.stack([dataset.render_scene(r[1], size)[0] for r in rows]))
    gt = torch.from_numpy(np.stack([edit_mask(r[0], r[1], r[3], size) for r in rows])).float()
    uniq = sorted({r[2] for r in rows})
    tok, pad = enc.tokens(uniq)
    idx = {u: i for i, u in enumerate(uniq)}
    ii = torch.tensor([idx[r[2]] for r in rows])
    caps = sorted({dataset.caption(r[k]) for r in rows for k in (0, 1)})
    cidx = {c: i for i, c in enumerate(caps)}
    with torch.no_grad():
        ctok = enc.tokens(caps, chunk=128)[0]
        temb = torch.cat([enc.clip.encode_text(ctok[i:i + 256]) for i in range(0, len(caps), 256)])
        e_src, f_src = [], []
        for i in range(0, n, 128):
            e, f = enc.clip.image(src[i:i + 128])
            e_src.append(e)
            f_src.append(f)
    return {"src": src, "tgt": tgt, "ins": tok[ii], "pad": pad[ii], "e_src": torch.cat(e_src),
            "f_src": torch.cat(f_src), "patches": torch.cat(f_src),
            "t_src": temb[[cidx[dataset.caption(r[0])] for r in rows]],
            "t_tgt": temb[[cidx[dataset.caption(r[1])] for r in rows]],
            "gt": gt, "gt_patch": F.adaptive_avg_pool2d(gt[:, None], 8).flatten(1).clamp(0, 1),
            "ops": [r[3] for r in rows], "instructions": [r[2] for r in rows]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-data", type=int, default=3000)
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the supervised mask BCE (0 = paper losses only)")
    ap.add_argument("--area", type=float, default=0.1, help="area penalty (stand-in for generator infidelity)")
    ap.add_argument("--clip", default=None, help="domain CLIP weights (default: the shipped ones)")
    ap.add_argument("--random-clip", action="store_true", help="smoke runs only: a random DomainClip")
    ap.add_argument("--out", default=REGION_PREDICTOR)
    ap.add_argument("--data-version", type=int, default=dataset.DATA_VERSION, choices=sorted(dataset.RADII))
    comfy_env.add_threads_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    clip = domain_clip.DomainClip().eval() if args.random_clip else None
    enc = DomainEncoders(clip_model=clip, clip_path=args.clip)
    pool = make_pool(args.n_data, args.seed + 11, enc, version=args.data_version)
    print(f"data {time.time() - t0:.0f}s: {args.n_data} samples", flush=True)
    t0 = time.time()  # the time budget counts training steps only
    rp = _predictor_module()
    pred = rp.RegionPredictor(img_dim=domain_clip.WIDTH, txt_dim=text_encoder.HIDDEN, clip_dim=domain_clip.EMBED)
    opt = torch.optim.AdamW(pred.parameters(), lr=args.lr, weight_decay=0.01)
    weights = {"a": 1.0, "b": 1.0, "l_g": 1.0, "l_d": 1.0, "l_s": 1.0, "area": args.area, "aux": args.aux}
    step = 0
    keys = [k for k in pool if torch.is_tensor(pool[k])]
    while step < args.max_steps and time.time() - t0 < args.minutes * 60:
        idx = torch.randint(0, args.n_data, (args.batch,), generator=gen)
        out = losses(pred, enc, {k: pool[k][idx] for k in keys}, weights)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step} " + " ".join(f"{k} {v.item():.3f}" for k, v in out.items())
                  + f" t {time.time() - t0:.0f}s", flush=True)
        step += 1
    pred.eval()
    meta = {"steps": step, "seed": args.seed, "aux": args.aux, "area": args.area, "random_clip": args.random_clip,
            "clip": os.path.basename(args.clip or paths.DOMAIN_CLIP)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rp.save(pred, args.out, meta)
    print(f"saved {args.out} after {step} steps; total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
