"""Train the domain CLIP (embedded.domain_clip) contrastively on rendered scenes and their captions.

Every caption of the domain (1 or 2 objects) is encoded once by the embedded MiniLM CLIP object. Each training
image gets its caption as positive and, besides the other captions in the batch, three hard negatives: its
spec with one object's colour, one object's shape, or the background changed. Reports zero-shot accuracy
on fresh scenes (the right caption scores highest among the positive and all its one-attribute variants).
    OMP_NUM_THREADS=1 python -m embedded.train_domain_clip
"""
import argparse
import copy
import itertools
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import comfy_env

comfy_env.setup()
from . import dataset, domain_clip, paths, text_encoder  # noqa: E402


def caption_universe():
    """Every caption the domain can produce (single objects and ordered pairs)."""
    objs = [(c, s) for c in dataset.COLORS for s in dataset.SHAPES]
    caps = set()
    for bg in dataset.COLORS:
        for c, s in objs:
            if c != bg:
                caps.add(dataset.caption({"background": bg, "objects": [{"shape": s, "color": c}]}))
        for (c1, s1), (c2, s2) in itertools.product(objs, objs):
            if bg not in (c1, c2):
                caps.add(dataset.caption({"background": bg, "objects": [{"shape": s1, "color": c1},
                                                                          {"shape": s2, "color": c2}]}))
    return sorted(caps)


def variants(spec, rng):
    """Three one-attribute edits of a spec: an object's colour, an object's shape, the background."""
    out = []
    i = rng.integers(len(spec["objects"]))
    used = {o["color"] for o in spec["objects"]}
    s = copy.deepcopy(spec)
    s["objects"][i]["color"] = rng.choice([c for c in dataset.COLORS if c != spec["background"] and c not in used])
    out.append(s)
    s = copy.deepcopy(spec)
    s["objects"][i]["shape"] = rng.choice([x for x in dataset.SHAPES if x != spec["objects"][i]["shape"]])
    out.append(s)
    s = copy.deepcopy(spec)
    s["background"] = rng.choice([c for c in dataset.COLORS if c not in used and c != spec["background"]])
    out.append(s)
    return out


def encode_universe(cache="/tmp/embedded_cache/clip_universe.pt"):
    if os.path.exists(cache):
        return torch.load(cache)
    caps = caption_universe()
    with torch.inference_mode():
        clip = text_encoder.build_clip()
        tok = torch.cat([text_encoder.encode(clip, caps[i:i + 256])[0] for i in range(0, len(caps), 256)])
    data = {"captions": caps, "tokens": tok.half().clone()}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    torch.save(data, cache)
    return data


def evaluate(model, tokens, index, n=300, seed=777):
    """Zero-shot: fraction of fresh scenes whose caption beats all three one-attribute variants (and 3 more)."""
    rng = np.random.default_rng(seed)
    ims, caps, specs = dataset.make_dataset(n, seed=seed, held_out=False)
    ok = 0
    with torch.no_grad():
        g = model.encode_image(torch.from_numpy(ims).float() / 255)
        for j, spec in enumerate(specs):
            negs = variants(spec, rng) + variants(spec, rng)
            ids = [index[caps[j]]] + [index[dataset.caption(s)] for s in negs]
            t = model.encode_text(tokens[ids].float())
            ok += int((t @ g[j]).argmax() == 0)
    return ok / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-data", type=int, default=12000)
    ap.add_argument("--out", default=paths.DOMAIN_CLIP)
    ap.add_argument("--data-version", type=int, default=dataset.DATA_VERSION, choices=sorted(dataset.RADII))
    comfy_env.add_threads_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    uni = encode_universe()
    tokens, index = uni["tokens"], {c: i for i, c in enumerate(uni["captions"])}
    ims, caps, specs = dataset.make_dataset(args.n_data, seed=args.seed + 5, held_out=False,
                                            version=args.data_version)
    images = torch.from_numpy(ims)
    print(f"data {time.time() - t0:.0f}s: {len(index)} captions, {len(ims)} images", flush=True)

    model = domain_clip.DomainClip()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / args.steps))))
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch,), generator=gen).tolist()
        pos = [index[caps[i]] for i in idx]
        hard = [index[dataset.caption(v)] for i in idx for v in variants(specs[i], rng)]
        img = model.encode_image(images[idx].float() / 255)
        txt = model.encode_text(tokens[pos + hard].float())
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.t()  # [B, B + 3B]
        # texts equal to the positive (duplicate captions in the batch) are not negatives
        ids = torch.tensor(pos + hard)
        same = ids[None, :] == torch.tensor(pos)[:, None]
        target = torch.arange(args.batch)
        same[target, target] = False
        logits = logits.masked_fill(same, -1e4)
        loss_i = F.cross_entropy(logits, target)
        lt = logits[:, :args.batch].t().masked_fill(same[:, :args.batch].t(), -1e4)
        loss = 0.5 * (loss_i + F.cross_entropy(lt, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} scale {scale.item():.1f} t {time.time() - t0:.0f}s", flush=True)
    model.eval()
    acc = evaluate(model, tokens, index)
    print(f"zero-shot (caption vs 6 one-attribute variants) accuracy {100 * acc:.1f}%", flush=True)
    domain_clip.save(model, args.out, {"zero_shot_acc": acc, "steps": args.steps, "seed": args.seed})
    print(f"saved {args.out}; total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
