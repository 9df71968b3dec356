"""The embedded default end to end: the edit benchmark runs on a small subset through ComfyUI's executor."""
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))


def test_edit_benchmark_runs_on_a_subset(comfy, tmp_path):
    import edit_benchmark
    out = tmp_path / "bench.json"
    results = edit_benchmark.run(["unet"], ["target_prompt", "uam_blend"], 1, 3, out)
    assert out.exists()
    rows = results["unet"]["target_prompt"]["cases"]
    assert len(rows) == 1 and rows[0]["case"] == "colour_red_to_yellow"
    for row in rows + results["unet"]["uam_blend"]["cases"]:
        assert 0 < row["bg_psnr"] < 100 and -1 <= row["bg_ssim"] <= 1 and row["success"] in (0.0, 1.0)
    assert math.isfinite(rows[0]["recon_psnr"])
    assert "target_prompt" in edit_benchmark.table(results)


def test_edit_cases_have_consistent_masks():
    sys.path.insert(0, str(ROOT))
    from embedded.edit_cases import CASES
    kinds = {c.kind for c in CASES}
    assert kinds == {"colour", "shape", "background", "removal", "addition", "two_object"}
    for case in CASES:
        edit, keep = case.masks(64)
        assert edit.sum() > 20, case.name
        assert (edit * keep).max() == 0, f"{case.name}: edit and keep regions overlap"
        assert case.word in case.source_prompt.split() and case.target_word in case.target_prompt.split()
