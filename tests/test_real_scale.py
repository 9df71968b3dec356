"""benchmarks/real_scale.py --tiny: the real-scale benchmark's code path (models built from ComfyUI's classes on
the device, Invert, the Edit Sampler for every technique and pipeline) on tiny configs on the CPU."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))


def test_tiny_run_has_every_variant_ok_and_finite(comfy, tmp_path, capsys):
    import logging
    import torch
    import real_scale
    import technique_overhead
    threads, level = torch.get_num_threads(), logging.getLogger().level
    try:
        rows = real_scale.main(["--tiny", "--threads", "1", "--steps", "4", "--budget", "900", "--json",
                                str(tmp_path / "tiny.json")])
    finally:
        torch.set_num_threads(threads)
        logging.getLogger().setLevel(level)
    table = capsys.readouterr().out
    variants = list(technique_overhead.VARIANTS) + ["proedit", "region_prompt"]
    expected = {(m, v) for m in ("tiny sd15", "tiny sdxl", "tiny flux") for v in variants}
    expected |= {(m, "unifyedit") for m in ("tiny sd15", "tiny sdxl")}
    assert {(r["model"], r["variant"]) for r in rows} == expected
    for r in rows:
        assert r["ok"] == "ok" and r["finite"] is True and r["ms_per_step"] > 0 and r["invert_s"] > 0, r
        assert r["weights"] > 0 and real_scale.fits(r) == "yes*"  # CPU: weights only, no GPU peak
        assert (r["ratio_base"] is None) == (r["variant"] in ("plain", "aux_only"))
    lines = [line.split() for line in table.splitlines()]
    for model, variant in expected:
        name = model.split()[1]
        assert any(row[:4] == ["tiny", name, variant, "ok"] and row[4] == "True" for row in lines), (model, variant)
    assert len(json.loads((tmp_path / "tiny.json").read_text())["rows"]) == len(expected)
