"""Quality gates of the embedded default, measured through stock ComfyUI nodes.

- autoencoder: PSNR of VAEEncode -> VAEDecode on fresh domain scenes (gate >= 30 dB);
- each denoiser: CLIPTextEncode + KSampler + VAEDecode on the held-out prompts (attribute combos never seen in
  training), then the exact classifier; the fraction of samples with background colour, shape colour and shape
  type all correct (gate >= 90%).
    OMP_NUM_THREADS=1 python -m embedded.quality_gates [--denoisers unet flux] [--per-prompt 4] [--sheet DIR]
Exit status 1 when a gate fails.
"""
import argparse
import json
import time

import numpy as np
import torch

from . import comfy_env

comfy_env.setup()
import utils.extra_config  # noqa: E402,F401  (ComfyUI: before `import nodes`)
import nodes  # noqa: E402

from . import classify, dataset, denoiser_specs, loader, paths, text_encoder  # noqa: E402

PSNR_GATE = 30.0
CORRECT_GATE = 0.90


def autoencoder_psnr(vae, n=256, seed=4242, batch=64):
    """Mean per-image PSNR (dB) of VAEEncode -> VAEDecode on n fresh scenes (held-out combos included)."""
    images, _, _ = dataset.make_dataset(n, seed=seed, held_out=False)
    x = torch.from_numpy(images).float().div(255.0)
    vals = []
    for i in range(0, n, batch):
        (lat,) = nodes.VAEEncode().encode(vae, x[i:i + batch])
        (rec,) = nodes.VAEDecode().decode(vae, lat)
        mse = ((rec.float() - x[i:i + batch]) ** 2).flatten(1).mean(1)
        vals.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return torch.cat(vals).mean().item()


def sample_prompts(model, clip, vae, prompts, per_prompt=4, seed=0, sampler=None, size=64):
    """Stock-node sampling: returns a list of IMAGE tensors [per_prompt, H, W, 3], one per prompt."""
    s = sampler
    (neg,) = nodes.CLIPTextEncode().encode(clip, "")
    out = []
    for j, p in enumerate(prompts):
        (pos,) = nodes.CLIPTextEncode().encode(clip, p)
        (latent,) = nodes.EmptyLatentImage().generate(size, size, per_prompt)
        (lat,) = nodes.KSampler().sample(model, seed + j, s["steps"], s["cfg"], s["sampler_name"], s["scheduler"],
                                         pos, neg, latent, denoise=1.0)
        (img,) = nodes.VAEDecode().decode(vae, lat)
        out.append(img.float())
    return out


def score(prompts, images):
    """Fraction all-correct plus per-attribute accuracies (background, object colour, shape, object count)."""
    n = 0
    counts = {"all": 0, "background": 0, "color": 0, "shape": 0, "count": 0}
    for p, batch in zip(prompts, images):
        bg, objs = classify.parse_caption(p)
        for im in batch.numpy():
            pred = classify.classify(im)
            n += 1
            counts["all"] += classify.matches(pred, bg, objs)
            counts["background"] += pred["background"] == bg
            counts["count"] += len(pred["objects"]) == len(objs)
            if len(pred["objects"]) == len(objs):
                counts["color"] += sorted(o["color"] for o in pred["objects"]) == sorted(c for _, c in objs)
                counts["shape"] += sorted(o["shape"] for o in pred["objects"]) == sorted(s for s, _ in objs)
    return {k: v / max(n, 1) for k, v in counts.items()} | {"n": n}


def contact_sheet(images, path):
    """Save all samples as one PNG grid (rows = prompts)."""
    from PIL import Image
    rows = [np.concatenate(list(b.numpy()), axis=1) for b in images]
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--denoisers", nargs="*", default=["unet", "flux"])
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", default=None, help="folder for contact sheets of the samples")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--seen", action="store_true",
                    help="diagnostic: also score 24 single-object combos that training did show")
    ap.add_argument("--progress", action="store_true", help="show ComfyUI's sampler progress bars")
    ap.add_argument("--unet", default=paths.UNET, help="U-Net weights to gate (default: the shipped ones)")
    ap.add_argument("--flux", default=paths.FLUX, help="Flux weights to gate (default: the shipped ones)")
    ap.add_argument("--vae", default=paths.AUTOENCODER, help="autoencoder to gate (default: the shipped one)")
    comfy_env.add_threads_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import comfy.utils
    comfy.utils.set_progress_bar_enabled(args.progress)
    results, ok = {}, True
    with torch.inference_mode():
        t0 = time.time()
        vae = loader.load_vae(args.vae)
        psnr = autoencoder_psnr(vae)
        results["autoencoder_psnr_db"] = psnr
        ok &= psnr >= PSNR_GATE
        print(f"autoencoder PSNR {psnr:.2f} dB (gate {PSNR_GATE}) {'PASS' if psnr >= PSNR_GATE else 'FAIL'} "
              f"[{time.time() - t0:.0f}s]", flush=True)
        clip = text_encoder.build_clip()
        prompts = dataset.held_out_prompts()
        for name in args.denoisers:
            t0 = time.time()
            weights = args.unet if name == "unet" else args.flux
            model = loader.load_model(name, weights)
            spec = loader.read_metadata(weights)
            sampler = spec.get("sampler", denoiser_specs.SPECS[name]["sampler"])
            imgs = sample_prompts(model, clip, vae, prompts, args.per_prompt, args.seed, sampler)
            r = score(prompts, imgs)
            results[name] = r
            passed = r["all"] >= CORRECT_GATE
            ok &= passed
            print(f"{name}: all-correct {100 * r['all']:.1f}% of {r['n']} held-out samples (gate "
                  f"{100 * CORRECT_GATE:.0f}%) {'PASS' if passed else 'FAIL'}; background {100 * r['background']:.1f}% "
                  f"colour {100 * r['color']:.1f}% shape {100 * r['shape']:.1f}% count {100 * r['count']:.1f}% "
                  f"[{time.time() - t0:.0f}s]", flush=True)
            if args.seen:
                held = set(dataset.held_out_triples())
                seen = [t for t in dataset.all_triples() if t not in held][::6][:len(prompts)]
                seen_prompts = [dataset.caption({"background": b, "objects": [{"shape": sh, "color": c}]})
                                for sh, c, b in seen]
                rs = score(seen_prompts, sample_prompts(model, clip, vae, seen_prompts, args.per_prompt, args.seed,
                                                         sampler))
                results[name + "_seen"] = rs
                print(f"{name} (diagnostic, seen combos): all-correct {100 * rs['all']:.1f}%; colour "
                      f"{100 * rs['color']:.1f}% shape {100 * rs['shape']:.1f}% count {100 * rs['count']:.1f}%", flush=True)
            if args.sheet:
                import os
                os.makedirs(args.sheet, exist_ok=True)
                contact_sheet(imgs, os.path.join(args.sheet, f"{name}_held_out.png"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
