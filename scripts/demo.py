"""The main job: headless ComfyUI (its own main.py server on 127.0.0.1) runs the pack's embedded example
workflows and writes the edited images, a labelled contact sheet and a metrics JSON.

    .venv/bin/python scripts/demo.py [--out output/demo] [--threads 2]
"""
import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "workflows"))

from harness.server import ComfyServer  # noqa: E402


def embedded_workflows():
    """(technique label, denoiser, API prompt) of every embedded example workflow, in a stable order."""
    found = []
    for path in sorted((ROOT / "workflows" / "api").glob("*embedded*.json")):
        denoiser = "flux" if path.stem.endswith("flux") else "unet"
        label = path.stem.replace("_embedded_unet", "").replace("_embedded_flux", "")
        found.append((label, denoiser, json.loads(path.read_text())))
    return found


def contact_sheet(rows, labels, path, cell=128):
    """rows: [(row label, [images])] with the source first; labelled columns."""
    pad, head = 8, 22
    sheet = Image.new("RGB", (80 + len(labels) * (cell + pad), head + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels):
        draw.text((80 + j * (cell + pad), 4), label[:20], fill="black")
    for i, (row_label, images) in enumerate(rows):
        y = head + i * (cell + pad)
        draw.text((4, y + cell // 2), row_label, fill="black")
        for j, image in enumerate(images):
            if image is not None:
                sheet.paste(image.resize((cell, cell), Image.NEAREST), (80 + j * (cell + pad), y))
    sheet.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "output" / "demo"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import build
    from embedded import metrics
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workflows = embedded_workflows()
    labels = sorted({w[0] for w in workflows})
    results, images, cases = [], {}, {}
    with ComfyServer(threads=args.threads) as server:  # the pack puts the input images into its input folder
        for label, denoiser, prompt in tqdm(workflows, desc="demo workflows", unit="workflow"):
            case = cases[label] = build.case_of(prompt)
            source = build.source_pixels(case)
            _, keep = case.masks(64)
            entry = server.run(prompt, timeout=900)
            [file] = [f for _, f in server.output_files(entry, "images") if f["type"] == "output"]  # not previews
            picture = Image.open(io.BytesIO(server.view(file))).convert("RGB")
            picture.save(out / f"{label}_{denoiser}.png")
            images[(label, denoiser)] = picture
            edited = np.asarray(picture, np.float32) / 255.0
            layout = metrics.layout_check(edited, case.target)
            results.append({"workflow": label, "denoiser": denoiser, "case": case.name,
                            "source_prompt": case.source_prompt, "target_prompt": case.target_prompt,
                            "bg_psnr": metrics.psnr(edited, source, keep), "bg_ssim": metrics.ssim(edited, source, keep),
                            "edit_success": layout["success"], "shift_px": layout["shift"],
                            "area_ratio": layout["area_ratio"],
                            "attribute_success": bool(metrics.edit_success(edited, case.target)),
                            "image": f"{label}_{denoiser}.png"})
    # one source column per edit case, before the workflows that edit it (the demo case's first)
    columns, keys = [], []
    for case in sorted({c.name for c in cases.values()}, key=lambda n: n != build.DEMO_CASE):
        columns.append("source" if case == build.DEMO_CASE else f"source: {case}")
        keys.append(("source", case))
        chosen = [label for label in labels if cases[label].name == case]
        columns += chosen
        keys += [(label, None) for label in chosen]
    picture = lambda name: Image.fromarray((build.source_pixels(build.case_by_name(name)) * 255).astype(np.uint8))
    rows = [(d, [picture(case) if label == "source" else images.get((label, d)) for label, case in keys])
            for d in ("unet", "flux")]
    contact_sheet(rows, columns, out / "contact_sheet.png")
    (out / "metrics.json").write_text(json.dumps(results, indent=1))
    for r in results:
        print(f"{r['workflow']:28} {r['denoiser']:5} bg PSNR {r['bg_psnr']:6.2f} dB  SSIM {r['bg_ssim']:.3f}  "
              f"edit {'ok' if r['edit_success'] else 'missed'} (centre shift {r['shift_px']:.1f} px, area "
              f"x{r['area_ratio']:.2f})")
    print(f"wrote {out}/contact_sheet.png, metrics.json and {len(results)} edited images")


if __name__ == "__main__":
    main()
